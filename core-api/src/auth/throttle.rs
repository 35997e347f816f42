//! Brute-force protection for `/auth/login` that cannot be turned into a lockout.
//!
//! Only failed sign-ins count, in two leaky buckets:
//! - per account **and client** (an IPv4 address or an IPv6 /64): `per_client` failures a
//!   minute. A guesser on one address is stopped; the owner on another address is not
//!   affected at all.
//! - per account across all clients: `per_account` failures an hour, against guessing spread
//!   over many addresses. Past it, a client is still let through if it signed in to this
//!   account successfully within [`KNOWN_CLIENT_TTL`] (the owner's usual address), so a
//!   distributed attack slows strangers down but does not lock the owner out.
//!
//! A throttled attempt is answered 429 before the password is looked at, whether or not the
//! account exists, so the answer says nothing about the account. State is per instance and
//! bounded ([`MAX_ENTRIES`]); the gateway's per-IP limits come first.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::ClientKey;

/// How long a successful sign-in makes a client "known" for its account.
pub const KNOWN_CLIENT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bound on tracked keys per table; past it new keys are not tracked (and logged), so a
/// flood of distinct accounts cannot grow memory without bound.
pub const MAX_ENTRIES: usize = 500_000;

/// Why an attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Too many failures for this account from this client.
    Client,
    /// Too many failures for this account, and this client never signed in to it.
    Account,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "account_and_client",
            Self::Account => "account",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub scope: Scope,
    pub retry_after: Duration,
}

/// Leaky buckets of failures: each failure adds one, the level drains at `capacity / window`.
/// A key whose next failure would overflow is refused.
struct Buckets<K> {
    capacity: f64,
    per_sec: f64,
    levels: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    fn new(capacity: u32, window: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_sec: capacity / window.as_secs_f64().max(1.0),
            levels: Mutex::new(HashMap::new()),
        }
    }

    fn drained(&self, (level, at): (f64, Instant), now: Instant) -> f64 {
        (level - now.saturating_duration_since(at).as_secs_f64() * self.per_sec).max(0.0)
    }

    /// `Some(wait)` if one more failure would overflow.
    fn full(&self, key: &K, now: Instant) -> Option<Duration> {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        let level = self.drained(*levels.get(key)?, now);
        (level + 1.0 > self.capacity)
            .then(|| Duration::from_secs_f64((level + 1.0 - self.capacity) / self.per_sec))
    }

    fn add(&self, key: &K, now: Instant) {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = levels.get_mut(key) {
            *entry = (self.drained(*entry, now) + 1.0, now);
        } else if levels.len() < MAX_ENTRIES {
            levels.insert(key.clone(), (1.0, now));
        } else {
            tracing::warn!("login throttle table full; a new key is not tracked");
        }
    }

    fn clear(&self, key: &K) {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn evict(&self, now: Instant) {
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        levels.retain(|_, entry| self.drained(*entry, now) > 0.0);
        levels.shrink_to_fit();
    }
}

pub struct LoginThrottle {
    per_client: Buckets<(String, ClientKey)>,
    per_account: Buckets<String>,
    known: Mutex<HashMap<(String, ClientKey), Instant>>,
}

impl LoginThrottle {
    /// `per_client` failures a minute per account and client, `per_account` failures an hour
    /// per account.
    pub fn new(per_client: u32, per_account: u32) -> Self {
        Self {
            per_client: Buckets::new(per_client, Duration::from_secs(60)),
            per_account: Buckets::new(per_account, Duration::from_secs(3600)),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `client` may try a password for `account` now.
    pub fn check(&self, account: &str, client: ClientKey) -> Result<(), Throttled> {
        self.check_at(account, client, Instant::now())
    }

    fn check_at(&self, account: &str, client: ClientKey, now: Instant) -> Result<(), Throttled> {
        let pair = (account.to_string(), client);
        if let Some(retry_after) = self.per_client.full(&pair, now) {
            return Err(Throttled {
                scope: Scope::Client,
                retry_after,
            });
        }
        if let Some(retry_after) = self.per_account.full(&pair.0, now)
            && !self.is_known(&pair, now)
        {
            return Err(Throttled {
                scope: Scope::Account,
                retry_after,
            });
        }
        Ok(())
    }

    fn is_known(&self, pair: &(String, ClientKey), now: Instant) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pair)
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_CLIENT_TTL)
    }

    pub fn failed(&self, account: &str, client: ClientKey) {
        self.failed_at(account, client, Instant::now());
    }

    fn failed_at(&self, account: &str, client: ClientKey, now: Instant) {
        let pair = (account.to_string(), client);
        self.per_client.add(&pair, now);
        self.per_account.add(&pair.0, now);
    }

    /// The password was right: this client is known for the account, its own failures are
    /// forgiven.
    pub fn succeeded(&self, account: &str, client: ClientKey) {
        self.succeeded_at(account, client, Instant::now());
    }

    fn succeeded_at(&self, account: &str, client: ClientKey, now: Instant) {
        let pair = (account.to_string(), client);
        self.per_client.clear(&pair);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_ENTRIES || known.contains_key(&pair) {
            known.insert(pair, now);
        }
    }

    /// Forgets drained buckets and expired known clients (called every minute).
    pub fn evict(&self) {
        let now = Instant::now();
        self.per_client.evict(now);
        self.per_account.evict(now);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, at| now.saturating_duration_since(*at) < KNOWN_CLIENT_TTL);
        known.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> ClientKey {
        ClientKey::of(s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0])))
    }

    #[test]
    fn a_guesser_is_stopped_and_the_owner_elsewhere_is_not() {
        let t = LoginThrottle::new(3, 100);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.check_at("a", ip("203.0.113.7"), now).is_ok());
            t.failed_at("a", ip("203.0.113.7"), now);
        }
        let refused = t.check_at("a", ip("203.0.113.7"), now);
        assert!(
            matches!(refused, Err(Throttled { scope: Scope::Client, retry_after }) if retry_after <= Duration::from_secs(20))
        );
        assert!(t.check_at("a", ip("198.51.100.2"), now).is_ok());
        assert!(t.check_at("b", ip("203.0.113.7"), now).is_ok());
        // The bucket drains: a third of a minute later one more attempt is allowed.
        assert!(
            t.check_at("a", ip("203.0.113.7"), now + Duration::from_secs(21))
                .is_ok()
        );
    }

    #[test]
    fn a_distributed_attack_throttles_strangers_but_not_a_known_client() {
        let t = LoginThrottle::new(3, 10);
        let now = Instant::now();
        t.succeeded_at("a", ip("198.51.100.2"), now);
        for i in 0..10 {
            t.failed_at("a", ip(&format!("203.0.113.{i}")), now);
        }
        assert!(matches!(
            t.check_at("a", ip("192.0.2.1"), now),
            Err(Throttled {
                scope: Scope::Account,
                ..
            })
        ));
        assert!(t.check_at("a", ip("198.51.100.2"), now).is_ok());
        t.evict();
    }

    #[test]
    fn success_forgives_the_clients_own_failures() {
        let t = LoginThrottle::new(2, 100);
        let now = Instant::now();
        t.failed_at("a", ip("2001:db8::1"), now);
        t.failed_at("a", ip("2001:db8::2"), now);
        // Same /64: one bucket.
        assert!(t.check_at("a", ip("2001:db8::3"), now).is_err());
        t.succeeded_at("a", ip("2001:db8::1"), now);
        assert!(t.check_at("a", ip("2001:db8::3"), now).is_ok());
    }
}
