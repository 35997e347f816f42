//! Rate limits (GCRA): named limits keyed by client IP, token subject or one global bucket.
//! 429 answers carry `Retry-After` and `RateLimit-Limit/Remaining/Reset`.
//!
//! IPv6 clients are keyed by their network, not their address: one subscriber usually gets a
//! whole /64 (RFC 6177, RFC 8273 even gives each host its own), so keying by address would let
//! one client walk through 2^64 fresh buckets. `ipv6_prefix` (default 64) sets the length;
//! IPv4 addresses, including IPv4-mapped IPv6 ones, are keyed by the full address.
//!
//! `store = "local"` (governor): this process's buckets. The keyed state is pruned periodically
//! (idle keys whose bucket refilled are dropped) and hard-capped, so clients with many
//! addresses cannot grow memory without bound.
//!
//! `store = "redis"`: one bucket per key across every gateway instance — the same GCRA, run
//! atomically by a Lua script on Redis's clock, with keys that expire when their bucket is
//! full again. When Redis fails or is slower than `redis.timeout_ms`, the local bucket decides
//! (each instance still limits; counted in `rate_limit_store_errors_total`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use redis::aio::ConnectionManager;

use crate::settings::{Limit, LimitKey, LimitStore};

/// Past this many tracked keys a limiter starts over (after pruning did not help).
const MAX_KEYS: usize = 1_000_000;

/// The IPv6 prefix length client addresses are keyed by unless a limit says otherwise: the
/// usual end-site assignment (RFC 6177), the smallest network one subscriber controls.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// A bucket of a limit. Local buckets are keyed by it as it is (no text is built per
/// request); Redis keys are its text form (`Display`): the address, `net/prefix` for an IPv6
/// network, the subject, or empty for the one shared bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// A client: an IPv4 address (IPv4-mapped IPv6 included, RFC 4291 §2.5.5.2), or an IPv6
    /// network of the given prefix length.
    Client(IpAddr, u8),
    /// A token subject (visible ASCII: `AccessClaims::sub_header`).
    Subject(http::HeaderValue),
    /// The one bucket of a global limit, and of clients whose address is unknown.
    Shared,
}

impl Bucket {
    /// The bucket of a client address: IPv4 as the address, IPv6 as its `/ipv6_prefix` network
    /// (`2001:db8:1:2::/64`).
    pub fn client(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::Client(IpAddr::V4(v4), 32),
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                Self::Client(IpAddr::V6(net), prefix)
            }
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(IpAddr::V4(a), _) => write!(f, "{a}"),
            Self::Client(IpAddr::V6(net), prefix) => write!(f, "{net}/{prefix}"),
            Self::Subject(s) => f.write_str(s.to_str().unwrap_or_default()),
            Self::Shared => Ok(()),
        }
    }
}

/// Local buckets are found with aHash, randomly keyed per process (keys come from clients, so
/// the hash must not be predictable), instead of SipHash: ~300 fewer instructions per limited
/// request (callgrind, two limits). No middleware: an allowed request needs no snapshot of its
/// bucket (the 429's headers come from the limit's burst and the wait).
type Keyed = RateLimiter<
    Bucket,
    DefaultKeyedStateStore<Bucket, ahash::RandomState>,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

pub struct Named {
    pub name: String,
    pub key: LimitKey,
    pub burst: u32,
    /// `key = "ip"`: IPv6 clients share a bucket per network of this prefix length.
    pub ipv6_prefix: u8,
    store: LimitStore,
    /// Microseconds between two tokens (GCRA emission interval).
    interval_us: u64,
    quota: Quota,
    limiter: ArcSwap<Keyed>,
}

impl std::fmt::Debug for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Named")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { limit: u32, retry_after_secs: u64 },
}

impl Named {
    pub fn new(name: &str, l: &Limit) -> Self {
        let interval_us = interval_us(l);
        let burst = NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(std::time::Duration::from_micros(interval_us))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            name: name.to_string(),
            key: l.key,
            burst: l.burst,
            ipv6_prefix: l.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX),
            store: l.store,
            interval_us,
            quota,
            limiter: ArcSwap::from_pointee(Self::fresh(quota)),
        }
    }

    /// This limit's bucket for a client address (the shared one when the address is unknown).
    pub fn client_bucket(&self, ip: Option<IpAddr>) -> Bucket {
        ip.map_or(Bucket::Shared, |ip| Bucket::client(ip, self.ipv6_prefix))
    }

    fn fresh(quota: Quota) -> Keyed {
        RateLimiter::dashmap_with_hasher(quota, ahash::RandomState::new())
    }

    /// The verdict for one request in `bucket` without waiting, when this process's bucket
    /// decides (the limit is local, or no Redis is configured); else the Redis to ask
    /// ([`Self::check_shared`]). A local limit's check is a plain call, with no `async` state
    /// machine around it.
    pub fn check_now<'r>(
        &self,
        bucket: &Bucket,
        shared: Option<&'r RedisLimits>,
    ) -> Result<Verdict, &'r RedisLimits> {
        match shared {
            Some(redis) if self.store == LimitStore::Redis => Err(redis),
            _ => Ok(self.check_local(bucket)),
        }
    }

    /// The verdict of a shared limit: from Redis when it answers in time, from this process's
    /// bucket otherwise.
    pub async fn check_shared(&self, bucket: &Bucket, redis: &RedisLimits) -> Verdict {
        // Boxed: the Redis round trip's state (kilobytes, with its timeout) would otherwise be
        // laid out inline in `request_filter`'s future, which `async_trait` moves into a box of
        // its own on every request, whether or not a limit of the route is shared.
        let key = bucket.to_string();
        let shared_check = Box::pin(redis.gcra(&self.name, &key, self.interval_us, self.burst));
        match shared_check.await {
            Ok(None) => Verdict::Allowed,
            Ok(Some(wait_us)) => Verdict::Limited {
                limit: self.burst,
                retry_after_secs: wait_us.div_ceil(1_000_000).max(1),
            },
            Err(e) => {
                redis.failed(&self.name, &e);
                self.check_local(bucket)
            }
        }
    }

    fn check_local(&self, bucket: &Bucket) -> Verdict {
        match self.limiter.load().check_key(bucket) {
            Ok(_) => Verdict::Allowed,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict::Limited {
                    limit: self.burst,
                    retry_after_secs: wait.as_secs() + 1,
                }
            }
        }
    }

    /// Drops keys whose bucket is full again; starts over past the hard cap.
    pub fn prune(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() > MAX_KEYS {
            tracing::warn!(limit = %self.name, keys = limiter.len(), "rate-limit state over its cap; resetting");
            self.limiter.store(Arc::new(Self::fresh(self.quota)));
        }
    }
}

/// All named limits of a configuration.
#[derive(Default, Clone)]
pub struct Limits(HashMap<String, Arc<Named>>);

impl Limits {
    pub fn new(limits: &std::collections::BTreeMap<String, Limit>) -> Self {
        Self(
            limits
                .iter()
                .map(|(n, l)| (n.clone(), Arc::new(Named::new(n, l))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Named>> {
        self.0.get(name)
    }

    pub fn prune(&self) {
        for l in self.0.values() {
            l.prune();
        }
    }
}

/// Headers of a 429 (draft-ietf-httpapi-ratelimit-headers field names).
pub fn headers(limit: u32, retry_after_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("retry-after", retry_after_secs.to_string()),
        ("ratelimit-limit", limit.to_string()),
        ("ratelimit-remaining", "0".into()),
        ("ratelimit-reset", retry_after_secs.to_string()),
    ]
}

/// GCRA on Redis: the key holds the theoretical arrival time (TAT, µs on Redis's clock). A
/// request is allowed when the new TAT is at most `burst` intervals ahead of now; the key
/// expires when the bucket would be full again. Returns 0, or the microseconds to wait.
/// The TAT is written with `%d`: a Lua number becomes a command argument with 14 significant
/// digits, and a time in µs has 16.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > interval * burst then
  return ahead - interval * burst
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000))
return 0
";

/// One token every this many microseconds: 1 s / `per_second`, or 1 min / `per_minute`. In
/// microseconds, not milliseconds, where 1000 / `per_second` rounded down turned 400 a second
/// into 500 and anything over 1 000 into 1 000 (settings refuse more than 1 000 000).
fn interval_us(l: &Limit) -> u64 {
    match l.per_minute {
        0 => 1_000_000 / u64::from(l.per_second.max(1)),
        n => 60_000_000 / u64::from(n),
    }
    .max(1)
}

/// The Redis connection shared by every `store = "redis"` limit.
pub struct RedisLimits {
    pub url: String,
    client: redis::Client,
    /// Dropped after a failure, so the next try starts from a fresh connection.
    conn: arc_swap::ArcSwapOption<redis::aio::ConnectionManager>,
    script: redis::Script,
    timeout: std::time::Duration,
    errors: prometheus::IntCounterVec,
    last_warning: std::sync::Mutex<Option<std::time::Instant>>,
    /// After a failure Redis is not asked again until then: requests do not each wait for
    /// the timeout while it is down.
    skip_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long a failed Redis is left alone before the next try.
const RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(2);

impl RedisLimits {
    pub fn new(
        s: &crate::settings::Redis,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, crate::settings::Invalid> {
        let client = redis::Client::open(s.url.as_str())
            .map_err(|e| crate::settings::Invalid::new("redis.url", e.to_string()))?;
        Ok(Self {
            url: s.url.clone(),
            client,
            conn: arc_swap::ArcSwapOption::empty(),
            script: redis::Script::new(GCRA),
            timeout: std::time::Duration::from_millis(s.timeout_ms.max(1)),
            errors: metrics.rate_limit_store_errors.clone(),
            last_warning: std::sync::Mutex::new(None),
            skip_until: std::sync::Mutex::new(None),
        })
    }

    async fn gcra(
        &self,
        limit: &str,
        key: &str,
        interval_us: u64,
        burst: u32,
    ) -> Result<Option<u64>, String> {
        if self
            .skip_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return Err("skipped after a recent failure".into());
        }
        // `rl2`: the TAT is in µs since this version (`rl` held ms); instances of both versions
        // side by side during a rollout keep apart rather than misread each other's buckets.
        let redis_key = format!("gatehouse:rl2:{limit}:{key}");
        let attempt = async {
            // A kept connection may have died with an earlier Redis (restart, failover): on
            // its first error, one more try on a fresh connection.
            let kept = self.conn.load_full();
            let tries = if kept.is_some() { 2 } else { 1 };
            let mut last = String::new();
            for n in 0..tries {
                let mut conn = match (n, &kept) {
                    (0, Some(c)) => ConnectionManager::clone(c),
                    _ => {
                        let c = self
                            .client
                            .get_connection_manager()
                            .await
                            .map_err(|e| e.to_string())?;
                        self.conn.store(Some(Arc::new(c.clone())));
                        c
                    }
                };
                match self
                    .script
                    .key(&redis_key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async::<u64>(&mut conn)
                    .await
                {
                    Ok(wait) => return Ok((wait > 0).then_some(wait)),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(last)
        };
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))
            .and_then(|r| r);
        if result.is_err() {
            self.conn.store(None);
            *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now() + RETRY_AFTER_FAILURE);
        }
        result
    }

    /// Counts the failure; warns at most every 10 s.
    fn failed(&self, limit: &str, error: &str) {
        self.errors.with_label_values(&[limit]).inc();
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                limit,
                error,
                "rate limit store (Redis) failed; this instance's own buckets decide meanwhile"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rate is the configured one to the microsecond: 400 a second is one token every
    /// 2.5 ms (it was 2 ms, 500 a second), and a million a second one every µs (it was capped
    /// at one a millisecond, 1 000 a second).
    #[test]
    fn the_emission_interval_is_the_configured_rate() {
        for (per_second, per_minute, us) in [
            (1, 0, 1_000_000),
            (3, 0, 333_333),
            (400, 0, 2_500),
            (700, 0, 1_428),
            (1_000_000, 0, 1),
            (1, 7, 8_571_428),
            (1, 60_000, 1_000),
        ] {
            let l = Limit {
                per_second,
                per_minute,
                burst: 1,
                ..Limit::default()
            };
            assert_eq!(interval_us(&l), us, "{per_second}/s {per_minute}/min");
            assert_eq!(
                Named::new("t", &l).quota.replenish_interval(),
                std::time::Duration::from_micros(us)
            );
        }
    }

    #[test]
    fn burst_then_limited_per_key() {
        let n = Named::new(
            "t",
            &Limit {
                per_second: 1,
                burst: 3,
                ..Limit::default()
            },
        );
        let subject = |s: &'static str| Bucket::Subject(http::HeaderValue::from_static(s));
        for _ in 0..3 {
            assert_eq!(n.check_local(&subject("a")), Verdict::Allowed);
        }
        assert!(matches!(
            n.check_local(&subject("a")),
            Verdict::Limited {
                limit: 3,
                retry_after_secs: 1
            }
        ));
        assert_eq!(
            n.check_local(&subject("b")),
            Verdict::Allowed,
            "keys are independent"
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let k = |a: &str, p: u8| Bucket::client(ip(a), p).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            k("2001:db8:1:2:aaaa::1", 64),
            k("2001:db8:1:2:ffff:ffff:ffff:ffff", 64)
        );
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:ff::1", 48));
        assert_eq!(k("2001:db8::1", 128), "2001:db8::1/128");
        assert_ne!(k("2001:db8::1", 128), k("2001:db8::2", 128));
        // IPv4, plain or mapped, is one address: one key.
        assert_eq!(k("192.0.2.1", 64), "192.0.2.1");
        assert_eq!(k("::ffff:192.0.2.1", 64), "192.0.2.1");
        assert_eq!(k("::1", 64), "::/64");
    }

    #[test]
    fn addresses_of_one_network_share_a_bucket() {
        let n = Named::new(
            "t",
            &Limit {
                per_second: 1,
                burst: 2,
                ..Limit::default()
            },
        );
        let key = |a: &str| n.client_bucket(Some(ip(a)));
        assert_eq!(n.check_local(&key("2001:db8:5:6::1")), Verdict::Allowed);
        assert_eq!(n.check_local(&key("2001:db8:5:6::2")), Verdict::Allowed);
        assert!(matches!(
            n.check_local(&key("2001:db8:5:6:dead:beef:0:3")),
            Verdict::Limited { .. }
        ));
        assert_eq!(n.check_local(&key("2001:db8:5:7::1")), Verdict::Allowed);
    }
}
