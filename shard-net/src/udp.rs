//! The UDP sockets under every QUIC endpoint (client, shard and link), with large buffers.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use zonescaler_shared::limits;

use crate::quic::NetError;

/// A UDP socket bound to `addr`, asking for [`limits::UDP_SOCKET_BUFFER_BYTES`] of receive and
/// send buffer (an IPv6 one is dual-stack where the system allows). A buffer the kernel caps
/// lower is logged, not an error: the endpoint still works, it just drops sooner under load.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6()
        && let Err(e) = socket.set_only_v6(false)
    {
        tracing::debug!(%e, "unable to make the socket dual-stack");
    }
    let want = limits::UDP_SOCKET_BUFFER_BYTES;
    // Linux doubles the request for its bookkeeping and caps it at net.core.[rw]mem_max.
    if let Err(e) = socket.set_recv_buffer_size(want) {
        tracing::debug!(%e, "unable to set the receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(want) {
        tracing::debug!(%e, "unable to set the send buffer");
    }
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < want {
        tracing::info!(
            wanted = want,
            got,
            "UDP receive buffer capped by the system (raise net.core.rmem_max for busy shards \
             and bot swarms)"
        );
    }
    Ok(socket.into())
}

/// A quinn endpoint on a [`bind`] socket, on the tokio runtime of the current context (the
/// caller runs inside one: the socket registers with its reactor).
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    bind(addr)
        .and_then(|socket| {
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                server,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
        })
        .map_err(|source| NetError::Bind { addr, source })
}

/// [`endpoint`] on a socket that drops everything while `switch` is cut ([`crate::fault`]).
pub(crate) fn endpoint_with_switch(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    switch: crate::fault::PartitionSwitch,
) -> Result<quinn::Endpoint, NetError> {
    use quinn::Runtime as _;
    tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    bind(addr)
        .and_then(|socket| runtime.wrap_udp_socket(socket))
        .and_then(|inner| {
            let socket = Arc::new(crate::fault::CutSocket::new(inner, switch));
            quinn::Endpoint::new_with_abstract_socket(
                quinn::EndpointConfig::default(),
                server,
                socket,
                runtime,
            )
        })
        .map_err(|source| NetError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_get_more_than_the_default_buffer_where_the_system_allows() {
        let socket = bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
        let got = Socket::from(socket).recv_buffer_size().expect("readable");
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if let Some(cap) = cap {
            // Linux grants min(request, rmem_max), doubled.
            assert!(
                got >= limits::UDP_SOCKET_BUFFER_BYTES.min(cap),
                "asked for {} (cap {cap}), got {got}",
                limits::UDP_SOCKET_BUFFER_BYTES
            );
        } else {
            assert!(got > 0);
        }
    }
}
