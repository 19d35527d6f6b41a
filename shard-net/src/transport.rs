//! The sans-IO boundary: what a transport tells a shard, and what a shard asks of a transport.

use bytes::Bytes;
use zonescaler_shared::ConnId;
use zonescaler_shared::protocol::ErrorCode;

/// Something that happened on the network since the last tick.
#[derive(Clone, Debug, PartialEq)]
pub enum NetEvent {
    /// A client finished its QUIC/TLS handshake. `max_datagram_bytes` is the largest datagram the
    /// path carries now; snapshot parts are cut to fit it.
    Connected {
        conn: ConnId,
        max_datagram_bytes: usize,
    },
    /// One complete control-stream message (the length prefix already removed and checked).
    Control { conn: ConnId, bytes: Bytes },
    /// One datagram.
    Datagram { conn: ConnId, bytes: Bytes },
    /// The connection is gone (closed by either side, timed out, or refused by the driver).
    Disconnected { conn: ConnId, reason: String },
}

impl NetEvent {
    pub fn conn(&self) -> ConnId {
        match self {
            Self::Connected { conn, .. }
            | Self::Control { conn, .. }
            | Self::Datagram { conn, .. }
            | Self::Disconnected { conn, .. } => *conn,
        }
    }
}

/// Something the shard wants the transport to do. Commands for one connection are carried out in
/// the order they were issued.
#[derive(Clone, Debug, PartialEq)]
pub enum NetCommand {
    /// Send one control message reliably (the driver adds the length prefix).
    Control { conn: ConnId, bytes: Bytes },
    /// Send one datagram; it may be lost.
    Datagram { conn: ConnId, bytes: Bytes },
    /// Close the connection with a reason. Anything queued before it is attempted first.
    Close {
        conn: ConnId,
        code: ErrorCode,
        reason: String,
    },
}

impl NetCommand {
    pub fn conn(&self) -> ConnId {
        match self {
            Self::Control { conn, .. } | Self::Datagram { conn, .. } | Self::Close { conn, .. } => {
                *conn
            }
        }
    }
}
