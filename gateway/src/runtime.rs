//! The compiled configuration the proxy reads per request (`Runtime`, swapped whole on reload):
//! routes with their CORS policy, limits and upstream resolved, the key fetcher, the limit
//! stores, the trusted proxies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::admission::HeadLimits;
use crate::client_ip::TrustedProxies;
use crate::cors;
use crate::jwks::Jwks;
use crate::limits::{Limits, Named, RedisLimits};
use crate::metrics::RouteMetrics;
use crate::settings::{LimitKey, Route, Settings};
use crate::upstream::UpstreamRt;

/// A route with everything it references resolved.
#[derive(Clone)]
pub struct RouteRt {
    pub cfg: Route,
    pub cors: Option<cors::Policy>,
    pub limits: Vec<Arc<Named>>,
    pub body_limit: usize,
    pub upstream: Arc<UpstreamRt>,
    pub metrics: Arc<RouteMetrics>,
}

impl RouteRt {
    /// Whether the route has a limit keyed by `key` (a few limits at most: a short scan).
    pub fn limited_by(&self, key: LimitKey) -> bool {
        self.limits.iter().any(|l| l.key == key)
    }
}

/// The compiled configuration (`compile.rs` builds it); swapped whole on reload.
#[derive(Clone)]
pub struct Runtime {
    pub settings: Settings,
    pub jwks: Arc<Jwks>,
    pub upstreams: HashMap<String, Arc<UpstreamRt>>,
    pub routes: Vec<RouteRt>,
    pub limits: Limits,
    /// The store of `store = "redis"` limits (kept across reloads while the URL is the same).
    pub redis: Option<Arc<RedisLimits>>,
    pub trusted: TrustedProxies,
    pub hsts: http::HeaderValue,
    /// What a request head must fit (`server.max_uri_bytes`, `server.max_header_bytes`).
    pub head: HeadLimits,
    pub keepalive_secs: u64,
}

impl Runtime {
    /// This configuration with the upstreams whose host names now stand for other addresses
    /// rebuilt (a redeployed API on Fly, a recreated compose service); the others keep their
    /// health state and connections. `None` when no address changed.
    pub fn with_upstreams_resolved_again(&self) -> Result<Option<Runtime>, String> {
        let mut upstreams = HashMap::new();
        let mut changed = false;
        for (name, old) in &self.upstreams {
            let up = UpstreamRt::reuse_or_new(name, &old.settings, Some(old))
                .map_err(|i| format!("{}: {}", i.key, i.why))?;
            changed |= !Arc::ptr_eq(&up, old);
            upstreams.insert(name.clone(), up);
        }
        if !changed {
            return Ok(None);
        }
        let mut next = self.clone();
        for route in &mut next.routes {
            if let Some(up) = upstreams.get(&route.cfg.upstream) {
                route.upstream = up.clone();
            }
        }
        next.upstreams = upstreams;
        Ok(Some(next))
    }
}

#[cfg(test)]
impl RouteRt {
    /// A route with `limits`, no CORS and an upstream on a loopback address, for unit tests.
    #[allow(clippy::expect_used)]
    pub fn for_tests(cfg: Route, limits: Vec<Arc<Named>>) -> Self {
        let upstream = crate::settings::Upstream {
            targets: vec!["127.0.0.1:9".into()],
            ..Default::default()
        };
        Self {
            cfg,
            cors: None,
            limits,
            body_limit: crate::settings::DEFAULT_BODY_LIMIT,
            upstream: Arc::new(UpstreamRt::new("test", &upstream).expect("a loopback upstream")),
            metrics: Arc::new(RouteMetrics::new(
                &crate::metrics::Metrics::new().expect("metrics"),
                "/test",
            )),
        }
    }
}
