//! How both drivers ([`crate::quic`] for clients, [`crate::link`] for shard links) end a quinn
//! connection: once, with a reason that is also what the local side reports, and, when asked
//! politely, only after what was queued before the request has been written.
//!
//! The two drivers differ in what they carry and who opens the stream; they share exactly this:
//! the first close wins (so counters and reported reasons stay truthful), a polite close waits at
//! most [`CLOSE_FLUSH_TIMEOUT`] for a peer that stopped reading, and a stream is flushed (finished
//! and acknowledged) before the connection closes, because a close discards undelivered data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::Notify;
use zonescaler_shared::limits;

/// Longest close reason sent on the wire; longer ones are cut at a character boundary. The same
/// bound as an error message's detail, and small enough to always fit one packet.
pub const CLOSE_REASON_BYTES_MAX: usize = limits::ERROR_DETAIL_BYTES_MAX;
/// How long a polite close waits for earlier messages to be written (a peer that stopped reading
/// blocks the writes), for them to be acknowledged, or for a client that has not opened its
/// control stream yet to do so, before closing anyway.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Lock ignoring poison: every critical section in the drivers is a single map or option
/// operation that cannot leave the data half-updated, so a panic elsewhere must not take a driver
/// down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Add one to `counter` and return the new total. Callers log at warn level only when the total
/// is a power of two, so a fault repeated every tick cannot flood the log but is never silent.
pub(crate) fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// Count one frame or datagram of `len` bytes. Relaxed: these are statistics, read as a snapshot,
/// and order nothing else.
pub(crate) fn count(items: &AtomicU64, bytes: &AtomicU64, len: usize) {
    items.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(len as u64, Ordering::Relaxed);
}

/// `reason` cut to at most [`CLOSE_REASON_BYTES_MAX`] bytes, on a character boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    &reason[..reason.floor_char_boundary(CLOSE_REASON_BYTES_MAX)]
}

/// `Connection::closed` without its value, for `select!` arms.
pub(crate) async fn closed(conn: &quinn::Connection) {
    conn.closed().await;
}

/// A connection close discards stream data not yet delivered, so before closing, finish the
/// stream and wait (bounded) until the peer has acknowledged everything written.
pub(crate) async fn flush(send: &mut quinn::SendStream) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, send.stopped()).await;
    }
}

/// Close `endpoint` (and every connection on it) with `code` and `reason`, then wait up to
/// `timeout` for the closes to reach the peers, so they learn the reason instead of timing out.
pub(crate) async fn close_endpoint(
    endpoint: &quinn::Endpoint,
    code: u32,
    reason: &str,
    timeout: Duration,
) {
    endpoint.close(VarInt::from_u32(code), truncate_reason(reason).as_bytes());
    if tokio::time::timeout(timeout, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            local_addr = ?endpoint.local_addr().ok(),
            "shutdown: peers did not acknowledge the close in time"
        );
    }
}

/// A close we carried out: the application code and what the local side is told.
#[derive(Clone, Debug)]
pub(crate) struct LocalClose {
    pub code: u32,
    pub log_reason: String,
}

/// A polite close not carried out yet: it waits behind what was queued before it.
#[derive(Clone, Debug)]
struct CloseRequest {
    at: Instant,
    code: u32,
    reason: String,
    log_reason: String,
}

/// One connection and the record of how we ended it.
pub(crate) struct Closer {
    pub conn: quinn::Connection,
    /// Why *we* closed it, recorded before closing so the final event says it instead of quinn's
    /// bare "closed".
    local: Mutex<Option<LocalClose>>,
    /// The polite close request (the first one wins). It is kept here as well as queued so that
    /// a writer stuck behind a peer that stopped reading still closes after
    /// [`CLOSE_FLUSH_TIMEOUT`], instead of when (never) the stuck write completes.
    request: Mutex<Option<CloseRequest>>,
    /// Wakes [`Self::deadline`] when `request` is set.
    notify: Notify,
}

impl Closer {
    pub fn new(conn: quinn::Connection) -> Self {
        Self {
            conn,
            local: Mutex::new(None),
            request: Mutex::new(None),
            notify: Notify::new(),
        }
    }

    /// Close with `code`, telling the peer `reason` and the local side `log_reason`. Only the
    /// first close counts: if the connection is already closing (by us, the peer or a timeout)
    /// this does nothing and returns false.
    pub fn close(&self, code: u32, reason: &str, log_reason: String) -> bool {
        {
            let mut local = lock(&self.local);
            if local.is_some() || self.conn.close_reason().is_some() {
                return false;
            }
            *local = Some(LocalClose { code, log_reason });
        }
        self.conn
            .close(VarInt::from_u32(code), truncate_reason(reason).as_bytes());
        true
    }

    /// Record a polite close, to be carried out by the writer once what was queued before it is
    /// written ([`Self::close_as_requested`]) or by [`Self::deadline`]. Returns false if one was
    /// already requested (the first request wins).
    pub fn request(&self, code: u32, reason: String, log_reason: String) -> bool {
        {
            let mut request = lock(&self.request);
            if request.is_some() {
                return false;
            }
            *request = Some(CloseRequest {
                at: Instant::now(),
                code,
                reason,
                log_reason,
            });
        }
        self.notify.notify_one();
        true
    }

    /// Carry out the polite close request, if there is one.
    pub fn close_as_requested(&self) {
        let request = lock(&self.request).clone();
        if let Some(CloseRequest {
            code,
            reason,
            log_reason,
            ..
        }) = request
        {
            self.close(code, &reason, log_reason);
        }
    }

    /// Resolves once a polite close was requested and [`CLOSE_FLUSH_TIMEOUT`] has passed since.
    pub async fn deadline(&self) {
        loop {
            // Created before the check so a request made in between still wakes us.
            let notified = self.notify.notified();
            let at = lock(&self.request).as_ref().map(|r| r.at);
            if let Some(at) = at {
                let deadline = tokio::time::Instant::from_std(at + CLOSE_FLUSH_TIMEOUT);
                tokio::time::sleep_until(deadline).await;
                return;
            }
            notified.await;
        }
    }

    /// How we closed the connection, if we did (taken: the final event is reported once).
    pub fn take_local(&self) -> Option<LocalClose> {
        lock(&self.local).take()
    }

    /// Write `chunks` in full. Returns false when the writer should stop: the write failed (the
    /// connection or stream is gone, which the readers report), or a requested close ran out of
    /// patience first (then the close is carried out here).
    pub async fn write_guarded(&self, send: &mut quinn::SendStream, chunks: &mut [Bytes]) -> bool {
        tokio::select! {
            written = send.write_all_chunks(chunks) => match written {
                Ok(()) => true,
                Err(err) => {
                    tracing::debug!(%err, "stream write failed");
                    false
                }
            },
            () = self.deadline() => {
                self.close_as_requested();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(CLOSE_REASON_BYTES_MAX); // 2 bytes each
        let cut = truncate_reason(&long);
        assert!(cut.len() <= CLOSE_REASON_BYTES_MAX && cut.len() >= CLOSE_REASON_BYTES_MAX - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
