//! A test-only fault switch for a shard's link endpoint: a network partition on command.
//!
//! [`PartitionSwitch::cut_for`] makes the endpoint's UDP socket drop every datagram it sends and
//! every one it receives for a while, as a cut cable or a firewall would: connections are not
//! closed, QUIC sees only loss (it retransmits, and if the cut lasts past the idle timeout the
//! links time out and drop). Only link endpoints built with a switch
//! ([`crate::link::LinkOptions::partition`]) have one; the shard builds one only when the
//! operator enables test faults explicitly (see the server's `ZONESCALER_TEST_FAULTS`), so a
//! production endpoint runs on quinn's own socket with no check in its path.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Cuts one endpoint off the network for a while. Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct PartitionSwitch(Arc<SwitchState>);

#[derive(Debug, Default)]
struct SwitchState {
    /// The cut lasts until then.
    until: Mutex<Option<Instant>>,
    /// Datagrams dropped (both ways) since start.
    dropped: AtomicU64,
}

impl PartitionSwitch {
    /// Drop all the endpoint's traffic, both ways, from now for `d` (replacing any cut under way).
    pub fn cut_for(&self, d: Duration) {
        *self.0.until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + d);
    }

    /// End the cut now.
    pub fn heal(&self) {
        *self.0.until.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether traffic is being dropped now.
    pub fn is_cut(&self) -> bool {
        let until = *self.0.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|u| Instant::now() < u)
    }

    /// Datagrams dropped since start.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// A UDP socket that drops everything while its switch is cut.
pub(crate) struct CutSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    switch: PartitionSwitch,
}

impl CutSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, switch: PartitionSwitch) -> Self {
        Self { inner, switch }
    }
}

impl fmt::Debug for CutSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CutSocket")
            .field("cut", &self.switch.is_cut())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for CutSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.switch.is_cut() {
            // Gone on the wire, as far as the sender can tell.
            self.switch.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.poll_recv(cx, bufs, meta) {
                // Read and thrown away; polling again registers the waker when nothing is left.
                Poll::Ready(Ok(n)) if self.switch.is_cut() => {
                    self.switch.0.dropped.fetch_add(n as u64, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_lasts_its_time_and_heals() {
        let s = PartitionSwitch::default();
        assert!(!s.is_cut(), "not cut until asked");
        s.cut_for(Duration::from_secs(60));
        assert!(s.clone().is_cut(), "clones share the switch");
        s.heal();
        assert!(!s.is_cut());
        s.cut_for(Duration::ZERO);
        assert!(!s.is_cut(), "a cut of no time is over at once");
    }
}
