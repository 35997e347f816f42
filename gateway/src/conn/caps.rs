//! Connection caps, taken at accept before any TLS work: per listener (`max_connections`) and
//! per client (`max_connections_per_client`: an IPv4 address, an IPv6 /64; trusted proxies
//! exempt). A connection holds its [`Slot`] until it closes.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::settings;

/// Tells whether a peer is exempt from the per-client cap (a trusted proxy carries many
/// clients). Read at every accept, so a reload of `server.trusted_proxies` applies at once.
pub type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The connection counts and limits one listener shares between its filter and its app.
pub struct Limits {
    pub(super) listener: &'static str,
    max: usize,
    /// 0: no per-client cap.
    per_client: usize,
    pub(super) header_timeout: Duration,
    pub(super) keepalive: Duration,
    pub(super) active: AtomicUsize,
    /// Open connections per client key; a key is removed when its last connection closes,
    /// so the map never holds more than `max` entries.
    clients: Mutex<HashMap<ClientKey, usize>>,
    exempt: Exempt,
    gauge: IntGauge,
    refused_at_cap: IntCounter,
    refused_per_client: IntCounter,
    pub(super) header_timeouts: IntCounter,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("listener", &self.listener)
            .field("max", &self.max)
            .field("per_client", &self.per_client)
            .field("header_timeout", &self.header_timeout)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(
        listener: &'static str,
        server: &settings::Server,
        exempt: Exempt,
        metrics: &Metrics,
    ) -> Arc<Self> {
        Self::with(
            listener,
            (server.max_connections, server.max_connections_per_client),
            Duration::from_secs(server.header_timeout_seconds),
            Duration::from_secs(server.keepalive_timeout_seconds),
            exempt,
            metrics,
        )
    }

    /// `caps`: (per listener, per client).
    fn with(
        listener: &'static str,
        (max, per_client): (usize, usize),
        header_timeout: Duration,
        keepalive: Duration,
        exempt: Exempt,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let rejected = |reason| {
            metrics
                .connections_rejected
                .with_label_values(&[listener, reason])
        };
        Arc::new(Self {
            listener,
            max,
            per_client,
            header_timeout,
            keepalive,
            active: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            exempt,
            gauge: metrics.connections_active.with_label_values(&[listener]),
            refused_at_cap: rejected("max_connections"),
            refused_per_client: rejected("max_connections_per_client"),
            header_timeouts: rejected("header_timeout"),
        })
    }

    /// The per-client key of `peer`, unless the per-client cap is off or the peer is exempt.
    fn client_of(&self, peer: Option<IpAddr>) -> Option<ClientKey> {
        peer.map(|ip| ip.to_canonical())
            .filter(|ip| self.per_client > 0 && !(self.exempt)(*ip))
            .map(ClientKey::of)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, usize>> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `peer`, or `None` (counted) at either cap.
    pub(super) fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.refused_at_cap.inc();
            return None;
        }
        let client = self.client_of(peer);
        if let Some(key) = client {
            let mut clients = self.clients();
            let open = clients.entry(key).or_insert(0);
            if *open >= self.per_client {
                drop(clients);
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.refused_per_client.inc();
                return None;
            }
            *open += 1;
        }
        self.gauge.inc();
        Some(Slot {
            limits: self.clone(),
            client,
        })
    }
}

/// Held while a connection lives.
pub(super) struct Slot {
    limits: Arc<Limits>,
    client: Option<ClientKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut clients = self.limits.clients();
            if let Some(open) = clients.get_mut(&key) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    clients.remove(&key);
                }
            }
        }
        self.limits.active.fetch_sub(1, Ordering::AcqRel);
        self.limits.gauge.dec();
    }
}

/// Refuses a new TCP connection at either cap before a task is spawned for it or any TLS work
/// is done. (The app takes the slot; this is the cheap early look.)
#[async_trait]
impl ConnectionFilter for Limits {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        if self.active.load(Ordering::Acquire) >= self.max {
            self.refused_at_cap.inc();
            return false;
        }
        if let Some(key) = self.client_of(addr.map(SocketAddr::ip))
            && self
                .clients()
                .get(&key)
                .is_some_and(|n| *n >= self.per_client)
        {
            self.refused_per_client.inc();
            return false;
        }
        true
    }
}

/// Whose connections count together against `server.max_connections_per_client`: an IPv4
/// address, or an IPv6 /64 — the smallest block an end site is assigned (RFC 6177), inside
/// which a host picks addresses at will (SLAAC, temporary addresses of RFC 8981), so it cannot
/// walk around the cap through its own subnet. An IPv4-mapped IPv6 address (a dual-stack
/// listener) counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a.into()),
            // The upper 64 bits: the network part of the address.
            IpAddr::V6(a) => Self::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// Limits of a test listener: 3 connections, `per_client` per client, 10.0.0.1 exempt.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) fn test_limits(per_client: usize, header_ms: u64, keepalive_ms: u64) -> Arc<Limits> {
    let metrics = Metrics::new().unwrap();
    let exempt: Exempt = Arc::new(|ip: IpAddr| ip == IpAddr::from([10, 0, 0, 1]));
    Limits::with(
        "test",
        (3, per_client),
        Duration::from_millis(header_ms),
        Duration::from_millis(keepalive_ms),
        exempt,
        &metrics,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_slash_64s() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        // A dual-stack listener sees IPv4 clients as mapped addresses: still one per address,
        // not all of IPv4 in one ::ffff:0:0/96.
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
    }

    #[test]
    fn the_per_client_cap_counts_open_connections_and_spares_trusted_proxies() {
        let l = test_limits(2, 1000, 1000);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let first = l.admit(Some(a)).unwrap();
        let second = l.admit(Some(same_64)).unwrap();
        assert!(l.admit(Some(a)).is_none(), "a third from one /64");
        assert_eq!(l.refused_per_client.get(), 1);
        let other = l.admit(Some(b)).unwrap();
        assert!(
            l.admit(Some(b)).is_none(),
            "the listener cap (3) is reached"
        );
        assert_eq!(l.refused_at_cap.get(), 1);
        drop((first, other));
        let again = l.admit(Some(a)).unwrap();
        drop((second, again));
        assert!(l.clients().is_empty(), "keys go with their last connection");
        // A trusted proxy carries many clients: only the listener cap applies.
        let proxy = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<_> = (0..3).map(|_| l.admit(Some(proxy)).unwrap()).collect();
        assert_eq!(l.active.load(Ordering::Acquire), 3);
        drop(held);
        // Also as seen on a dual-stack listener.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.admit(Some(mapped)).unwrap()).collect();
        drop(held);
        // 0 turns the per-client cap off.
        let off = test_limits(0, 1000, 1000);
        let held: Vec<_> = (0..3).map(|_| off.admit(Some(b)).unwrap()).collect();
        assert_eq!(held.len(), 3);
    }
}
