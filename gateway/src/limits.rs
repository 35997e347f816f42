//! Rate limits (governor, GCRA): named limits keyed by client IP, token subject or one global
//! bucket. 429 answers carry `Retry-After` and `RateLimit-Limit/Remaining/Reset`. The keyed
//! state is pruned periodically (idle keys whose bucket refilled are dropped) and hard-capped,
//! so clients with many addresses cannot grow memory without bound.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::settings::{Limit, LimitKey};

/// Past this many tracked keys a limiter starts over (after pruning did not help).
const MAX_KEYS: usize = 1_000_000;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct Named {
    pub name: String,
    pub key: LimitKey,
    pub burst: u32,
    quota: Quota,
    limiter: ArcSwap<Keyed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { limit: u32, retry_after_secs: u64 },
}

impl Named {
    pub fn new(name: &str, l: &Limit) -> Self {
        let per_second = NonZeroU32::new(l.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            name: name.to_string(),
            key: l.key,
            burst: l.burst,
            quota,
            limiter: ArcSwap::from_pointee(Self::fresh(quota)),
        }
    }

    fn fresh(quota: Quota) -> Keyed {
        RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
    }

    pub fn check(&self, key: &str) -> Verdict {
        match self.limiter.load().check_key(&key.to_string()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_per_key() {
        let n = Named::new(
            "t",
            &Limit {
                key: LimitKey::Ip,
                per_second: 1,
                burst: 3,
            },
        );
        for _ in 0..3 {
            assert_eq!(n.check("a"), Verdict::Allowed);
        }
        assert!(matches!(
            n.check("a"),
            Verdict::Limited {
                limit: 3,
                retry_after_secs: 1
            }
        ));
        assert_eq!(n.check("b"), Verdict::Allowed, "keys are independent");
    }
}
