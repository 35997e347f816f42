//! One upstream at run time: its targets (host names looked up again periodically), balancing
//! (round robin or fewest in flight), passive ejection after failed connections or runs of 5xx,
//! and the active health-check loop.
//!
//! Pingora's `LoadBalancer` runs the active health checks; the pick per request is ours: each
//! target's health is copied into a flag after every health-check pass (the only time it
//! changes), so a pick reads flags in a short list instead of hashing every candidate backend
//! into Pingora's health map.

use std::cell::LazyCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;

use crate::settings::{Balance, Invalid, Upstream};

/// One upstream: its balancer, health-checked by a task that lives as long as the upstream
/// is part of the running configuration, and its peer timeouts.
pub struct UpstreamRt {
    pub name: String,
    pub settings: Upstream,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
    pub total: Option<Duration>,
    /// What the targets resolved to when this upstream was built (names are looked up again
    /// periodically; a change rebuilds the upstream).
    pub addresses: BTreeSet<SocketAddr>,
    /// The targets in `addresses` order, each with its health as of the last check pass.
    targets: Vec<Target>,
    /// Where the next round-robin pick starts.
    next: AtomicUsize,
    health_loop: AtomicBool,
    /// Per target (a handful): searched in place, no hashing per request.
    targets_state: Mutex<Targets>,
}

/// A target and whether the active health checks see it healthy (targets start healthy, as in
/// Pingora).
struct Target {
    addr: SocketAddr,
    healthy: AtomicBool,
}

/// The state of each target that has had one, by address.
#[derive(Default)]
struct Targets(Vec<(SocketAddr, TargetState)>);

impl Targets {
    fn get(&self, addr: &SocketAddr) -> Option<&TargetState> {
        self.0.iter().find(|(a, _)| a == addr).map(|(_, t)| t)
    }

    fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut TargetState> {
        self.0.iter_mut().find(|(a, _)| a == addr).map(|(_, t)| t)
    }

    fn entry(&mut self, addr: SocketAddr) -> &mut TargetState {
        let i = match self.0.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                self.0.push((addr, TargetState::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }
}

/// Passive health and load of one target.
#[derive(Default)]
struct TargetState {
    in_flight: usize,
    ejected_until: Option<Instant>,
    consecutive_5xx: u32,
}

/// The addresses `targets` stand for now (`host:port` names through the system resolver);
/// else the index of the first target that does not resolve, and why.
pub fn resolve(targets: &[String]) -> Result<BTreeSet<SocketAddr>, (usize, String)> {
    let mut out = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(t.as_str())
            .map_err(|e| (i, format!("{t}: cannot resolve: {e}")))?;
        out.extend(addrs);
    }
    Ok(out)
}

impl UpstreamRt {
    /// `previous` when its settings are the same and, for host names, its targets still
    /// resolve to the same addresses (it keeps its health state and connections; a name that
    /// fails to resolve now keeps the old); else a new upstream `name`.
    pub fn reuse_or_new(
        name: &str,
        u: &Upstream,
        previous: Option<&Arc<UpstreamRt>>,
    ) -> Result<Arc<Self>, Invalid> {
        let reused = previous.filter(|old| old.settings == *u).filter(|old| {
            !old.has_names() || resolve(&u.targets).map_or(true, |now| now == old.addresses)
        });
        match reused {
            Some(up) => Ok(up.clone()),
            None => Self::new(name, u).map(Arc::new),
        }
    }

    pub fn new(name: &str, u: &Upstream) -> Result<Self, Invalid> {
        let key = |k: &str| format!("upstreams.{name}.{k}");
        let addresses = resolve(&u.targets)
            .map_err(|(i, why)| Invalid::new(key(&format!("targets.{i}")), why))?;
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addresses.iter().copied())
            .map_err(|e| Invalid::new(key("targets"), e.to_string()))?;
        let mut hc = HttpHealthCheck::new("localhost", false);
        let err = |e: Box<pingora::Error>| Invalid::new(key("health_path"), e.to_string());
        let mut req = RequestHeader::build("GET", u.health_path.as_bytes(), None).map_err(err)?;
        req.insert_header("host", "localhost").map_err(err)?;
        hc.req = req;
        hc.consecutive_success = 1;
        hc.consecutive_failure = 2;
        hc.peer_template.options.connection_timeout =
            Some(Duration::from_millis(u.connect_timeout_ms));
        hc.peer_template.options.read_timeout =
            Some(Duration::from_millis(u.connect_timeout_ms.max(1000)));
        lb.set_health_check(Box::new(hc));
        Ok(Self {
            name: name.to_string(),
            settings: u.clone(),
            lb: Arc::new(lb),
            connect: Duration::from_millis(u.connect_timeout_ms),
            read: Duration::from_millis(u.read_timeout_ms),
            write: Duration::from_millis(u.write_timeout_ms),
            idle: Duration::from_millis(u.idle_timeout_ms),
            total: (u.total_timeout_ms > 0).then(|| Duration::from_millis(u.total_timeout_ms)),
            targets: addresses
                .iter()
                .map(|&addr| Target {
                    addr,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
            addresses,
            health_loop: AtomicBool::new(false),
            targets_state: Mutex::default(),
        })
    }

    /// Whether some target is a host name (its addresses can change).
    pub fn has_names(&self) -> bool {
        self.settings
            .targets
            .iter()
            .any(|t| t.parse::<SocketAddr>().is_err())
    }

    /// The target for the next attempt: healthy (active checks), not passively ejected, and
    /// by round robin or fewest requests in flight. Ejection is ignored when it would leave
    /// nothing, so a flapping check never turns into a total outage by itself.
    pub fn pick(&self) -> Option<SocketAddr> {
        // The clock is read only if some target was ejected.
        let now = LazyCell::new(Instant::now);
        let mut state = self.targets_state.lock().unwrap_or_else(|p| p.into_inner());
        let usable = |a: &SocketAddr| {
            state
                .get(a)
                .and_then(|t| t.ejected_until)
                .is_none_or(|until| until <= *now)
        };
        let healthy = |t: &&Target| t.healthy.load(Ordering::Relaxed);
        let chosen = match self.settings.balance {
            Balance::RoundRobin => {
                let n = self.targets.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let in_turn = || {
                    (0..n)
                        .map(|i| &self.targets[start.wrapping_add(i) % n])
                        .filter(healthy)
                };
                in_turn()
                    .find(|t| usable(&t.addr))
                    .or_else(|| in_turn().next())
            }
            Balance::LeastConnections => {
                let load = |t: &&Target| state.get(&t.addr).map_or(0, |s| s.in_flight);
                let candidates = || self.targets.iter().filter(healthy);
                candidates()
                    .filter(|t| usable(&t.addr))
                    .min_by_key(load)
                    .or_else(|| candidates().min_by_key(load))
            }
        }
        .map(|t| t.addr)?;
        state.entry(chosen).in_flight += 1;
        Some(chosen)
    }

    /// The attempt on `addr` is over; `status` is the target's answer, if it gave one. A run
    /// of `eject_after_5xx` server errors in a row ejects the target like a failed connection.
    pub fn release(&self, addr: SocketAddr, status: Option<u16>) {
        let mut state = self.targets_state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = state.get_mut(&addr) {
            t.in_flight = t.in_flight.saturating_sub(1);
            match status {
                Some(500..=599) => {
                    t.consecutive_5xx += 1;
                    let limit = self.settings.eject_after_5xx;
                    if limit > 0 && t.consecutive_5xx >= limit {
                        t.consecutive_5xx = 0;
                        t.ejected_until =
                            Some(Instant::now() + Duration::from_secs(self.settings.eject_seconds));
                        tracing::warn!(upstream = %self.name, target = %addr, errors = limit, "target answered with server errors in a row; ejected");
                    }
                }
                Some(_) => t.consecutive_5xx = 0,
                None => {}
            }
        }
    }

    /// Skips `addr` for `eject_seconds` after a failed connection.
    pub fn eject(&self, addr: SocketAddr) {
        let mut state = self.targets_state.lock().unwrap_or_else(|p| p.into_inner());
        state.entry(addr).ejected_until =
            Some(Instant::now() + Duration::from_secs(self.settings.eject_seconds));
    }

    /// Starts the active health checks once (needs a Tokio runtime). The task ends when the
    /// upstream is dropped, i.e. when a reload removed or replaced it.
    pub fn ensure_health_loop(self: &Arc<Self>) {
        if self.health_loop.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(up) = weak.upgrade() else { return };
                up.lb.backends().run_health_check(true).await;
                up.copy_health();
                let pause = Duration::from_millis(up.settings.health_interval_ms.max(50));
                drop(up);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Copies the health the last check pass left into the targets' flags.
    fn copy_health(&self) {
        let backends = self.lb.backends();
        for b in backends.get_backend().iter() {
            let Some(addr) = b.addr.as_inet() else {
                continue;
            };
            if let Some(t) = self.targets.iter().find(|t| t.addr == *addr) {
                t.healthy.store(backends.ready(b), Ordering::Relaxed);
            }
        }
    }

    pub fn healthy_targets(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.healthy.load(Ordering::Relaxed))
            .count()
    }
}
