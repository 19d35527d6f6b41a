//! Who may start a handshake with the client endpoint, decided at a connection's first packet.
//!
//! A pure function of counts ([`admission`]) and the table it reads ([`Sources`]), so the rule
//! is tested without a socket; `quic`'s accept loop feeds it quinn's `Incoming` and carries out
//! the answer (accept, refuse, Retry). Why each bound exists is in the `quic` module docs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use zonescaler_shared::limits;

/// Connections (handshaking or established) past which the driver refuses new ones outright.
/// The shard refuses clients past `CLIENTS_PER_SHARD_MAX` itself, politely, with `ServerFull`
/// over a live connection; this much higher bound only stops a connection flood from outrunning
/// that.
pub const CONNECTIONS_HARD_MAX: usize = 2 * limits::CLIENTS_PER_SHARD_MAX;

/// Who may start a handshake with a [`QuicServer`](crate::quic::QuicServer). [`Default`] takes
/// the bounds from `limits`; tests lower them to reach them with a handful of clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections, handshaking or established, that one source address may hold; the next one
    /// is refused. IPv6 sources count by their /64. Default `CONNECTIONS_PER_ADDRESS_MAX`.
    pub connections_per_address_max: usize,
    /// How many handshakes may be in progress before a connection from an address that has not
    /// proven it receives there is answered with a QUIC Retry instead of a handshake; 0 retries
    /// every such connection. Default `HANDSHAKES_BEFORE_RETRY`.
    pub handshakes_before_retry: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            connections_per_address_max: limits::CONNECTIONS_PER_ADDRESS_MAX,
            handshakes_before_retry: limits::HANDSHAKES_BEFORE_RETRY,
        }
    }
}

/// The part of a source address that names one host: the IPv4 address, or the /64 of an IPv6
/// one (what one host is usually given, so counting whole addresses would let it open a
/// connection from each). IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub(crate) fn source_of(addr: SocketAddr) -> IpAddr {
    match addr.ip().to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// Every connection from admission to its end (handshaking or established), by source.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    per_source: HashMap<IpAddr, usize>,
    pub(crate) total: usize,
}

impl Sources {
    pub(crate) fn count(&self, source: IpAddr) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, source: IpAddr) {
        *self.per_source.entry(source).or_insert(0) += 1;
        self.total += 1;
    }

    pub(crate) fn remove(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            // At least 1: entries are removed when they reach zero.
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                // Gone at zero, so the table is bounded by the live connections, not by every
                // address that ever connected.
                self.per_source.remove(&source);
            }
        }
    }
}

/// What the accept loop does with one incoming connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Accept,
    /// [`CONNECTIONS_HARD_MAX`] connections are live.
    RefuseFull,
    /// Its source holds [`ServerLimits::connections_per_address_max`] connections.
    RefuseAddress,
    /// Too many handshakes are in progress to start one for an address that has not proven it
    /// receives there: answer with a Retry, which costs no state.
    Retry,
}

/// The admission rule, given the connections live in all (`live`) and from this connection's
/// source (`live_from_source`), the handshakes in progress, and whether the source address is
/// validated (the client echoed a token this server gave it, such as a Retry's). Refusals come first so a host over its share
/// learns at once, without a Retry round trip first.
pub(crate) fn admission(
    limits: &ServerLimits,
    live: usize,
    live_from_source: usize,
    handshakes: u64,
    validated: bool,
) -> Admission {
    if live >= CONNECTIONS_HARD_MAX {
        Admission::RefuseFull
    } else if live_from_source >= limits.connections_per_address_max {
        Admission::RefuseAddress
    } else if !validated && handshakes >= limits.handshakes_before_retry as u64 {
        Admission::Retry
    } else {
        Admission::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_first_and_retries_only_unvalidated_addresses_under_load() {
        let limits = ServerLimits {
            connections_per_address_max: 4,
            handshakes_before_retry: 2,
        };
        let decide = |live, from_source, handshakes, validated| {
            admission(&limits, live, from_source, handshakes, validated)
        };
        assert_eq!(decide(10, 3, 1, false), Admission::Accept);
        assert_eq!(
            decide(10, 4, 0, true),
            Admission::RefuseAddress,
            "a validated address is still held to its share"
        );
        assert_eq!(decide(10, 3, 2, false), Admission::Retry);
        assert_eq!(
            decide(10, 3, 2, true),
            Admission::Accept,
            "an address that answered a Retry is not sent another"
        );
        assert_eq!(
            decide(10, 4, 2, false),
            Admission::RefuseAddress,
            "a host over its share learns it without a Retry round trip"
        );
        assert_eq!(
            decide(CONNECTIONS_HARD_MAX, 0, 0, true),
            Admission::RefuseFull
        );
        let retry_all = ServerLimits {
            handshakes_before_retry: 0,
            ..ServerLimits::default()
        };
        assert_eq!(admission(&retry_all, 0, 0, 0, false), Admission::Retry);
        assert_eq!(admission(&retry_all, 0, 0, 0, true), Admission::Accept);
    }

    #[test]
    fn sources_are_hosts_and_are_forgotten_at_zero() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("literal");
        assert_eq!(
            source_of(addr("10.0.0.1:1000")),
            source_of(addr("10.0.0.1:2000")),
            "a bot swarm on several ports is one source"
        );
        assert_eq!(
            source_of(addr("[::ffff:10.0.0.1]:1000")),
            source_of(addr("10.0.0.1:1000")),
            "a dual-stack socket sees IPv4 clients as mapped addresses"
        );
        assert_eq!(
            source_of(addr("[2001:db8:1:2:aaaa::1]:1000")),
            source_of(addr("[2001:db8:1:2:bbbb::2]:1000")),
            "one /64 is one host"
        );
        assert_ne!(
            source_of(addr("[2001:db8:1:2::1]:1000")),
            source_of(addr("[2001:db8:1:3::1]:1000"))
        );

        let mut sources = Sources::default();
        let (a, b) = (source_of(addr("10.0.0.1:1")), source_of(addr("10.0.0.2:1")));
        sources.add(a);
        sources.add(a);
        sources.add(b);
        assert_eq!(
            (sources.count(a), sources.count(b), sources.total),
            (2, 1, 3)
        );
        sources.remove(a);
        sources.remove(b);
        sources.remove(b); // never added twice: ignored
        assert_eq!(
            (sources.count(a), sources.count(b), sources.total),
            (1, 0, 1)
        );
        sources.remove(a);
        assert!(sources.per_source.is_empty() && sources.total == 0);
    }
}
