//! The compiled configuration the proxy reads per request (`Runtime`, swapped whole on reload):
//! routes with their CORS policy, limits and upstream resolved, the key fetcher, the limit
//! stores, the trusted proxies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::client_ip::TrustedProxies;
use crate::cors;
use crate::headers;
use crate::jwks::Jwks;
use crate::limits::{Limits, Named};
use crate::metrics::Metrics;
use crate::settings::{DEFAULT_BODY_LIMIT, Route, Settings};
use crate::upstream::{UpstreamRt, resolve};

/// A route with everything it references resolved.
pub struct RouteRt {
    pub cfg: Route,
    pub cors: Option<cors::Policy>,
    pub limits: Vec<Arc<Named>>,
    pub body_limit: usize,
    pub upstream: Arc<UpstreamRt>,
}

/// The compiled configuration; swapped whole on reload.
pub struct Runtime {
    pub settings: Settings,
    pub jwks: Arc<Jwks>,
    pub upstreams: HashMap<String, Arc<UpstreamRt>>,
    pub routes: Vec<RouteRt>,
    pub limits: Limits,
    /// The store of `store = "redis"` limits (kept across reloads while the URL is the same).
    pub redis: Option<Arc<crate::limits::RedisLimits>>,
    pub trusted: TrustedProxies,
    pub hsts: String,
    pub max_uri: usize,
    pub max_header_bytes: usize,
    pub keepalive_secs: u64,
}

impl Runtime {
    /// Compiles `s`, reusing the upstreams and key fetcher of `previous` where their settings
    /// did not change (so health state and verified-token caches survive a reload).
    pub fn compile(
        s: &Settings,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut upstreams = HashMap::new();
        for (name, u) in &s.upstreams {
            // Same settings and, for host names, the same addresses as now: keep it (its
            // health state and connections). A name that fails to resolve now keeps the old.
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.settings == *u)
                .filter(|old| {
                    !old.has_names() || resolve(&u.targets).map_or(true, |now| now == old.addresses)
                })
                .cloned();
            let up = match reused {
                Some(up) => up,
                None => Arc::new(UpstreamRt::new(name, u)?),
            };
            upstreams.insert(name.clone(), up);
        }
        let jwks = match previous.filter(|p| p.settings.jwt == s.jwt) {
            Some(p) => p.jwks.clone(),
            None => Arc::new(Jwks::from_settings(&s.jwt, metrics.clone())?),
        };
        let limits = Limits::new(&s.limits);
        let redis = match previous
            .and_then(|p| p.redis.clone())
            .filter(|r| r.url == s.redis.url)
        {
            Some(r) => Some(r),
            None if s.redis.url.is_empty() => None,
            None => Some(Arc::new(crate::limits::RedisLimits::new(
                &s.redis, metrics,
            )?)),
        };
        let mut routes = Vec::new();
        for (i, r) in s.routes.iter().enumerate() {
            let cors = match &r.cors {
                Some(name) => {
                    let c = s
                        .cors
                        .get(name)
                        .ok_or_else(|| format!("routes.{i}.cors: no [cors.{name}]"))?;
                    Some(cors::Policy::compile(c)?)
                }
                None => None,
            };
            let route_limits = r
                .limits
                .iter()
                .map(|l| {
                    limits
                        .get(l)
                        .cloned()
                        .ok_or_else(|| format!("routes.{i}.limits: no [limits.{l}]"))
                })
                .collect::<Result<_, _>>()?;
            let upstream = upstreams
                .get(&r.upstream)
                .cloned()
                .ok_or_else(|| format!("routes.{i}.upstream: no [upstreams.{}]", r.upstream))?;
            routes.push(RouteRt {
                cfg: r.clone(),
                cors,
                limits: route_limits,
                body_limit: r.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT),
                upstream,
            });
        }
        Ok(Self {
            settings: s.clone(),
            jwks,
            upstreams,
            routes,
            limits,
            redis,
            trusted: TrustedProxies::new(&s.server.trusted_proxies),
            hsts: headers::hsts_value(s.tls.hsts_max_age_seconds),
            max_uri: s.server.max_uri_bytes,
            max_header_bytes: s.server.max_header_bytes,
            keepalive_secs: s.server.keepalive_timeout_seconds,
        })
    }
}
