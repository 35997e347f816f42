//! The one pass from the settings as read to the running configuration: every check, every
//! file read, every host name resolved, and every problem reported together, each naming file,
//! line and key. `gateway check`, `gateway run` and every reload go through [`compile`], so
//! `check` fails on everything `run` would fail on.
//!
//! One function per section builds that section's part of the [`Runtime`] (or only checks it,
//! for what the server reads at start-up: listeners, connection limits, the admin listener).
//! Certificates are loaded last, and only when nothing else was wrong: the `self-signed`
//! source writes files.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_common::config::ConfigError;

use crate::admission::HeadLimits;
use crate::client_ip::TrustedProxies;
use crate::cors;
use crate::headers;
use crate::jwks::Jwks;
use crate::limits::{Limits, RedisLimits};
use crate::metrics::{Metrics, RouteMetrics};
use crate::runtime::{RouteRt, Runtime};
use crate::settings::{Auth, Config, DEFAULT_BODY_LIMIT, Invalid, LimitKey, LimitStore, Settings};
use crate::tls::CertStore;
use crate::upstream::UpstreamRt;

mod startup;
use startup::{admin, listen, server, tls};

/// A configuration ready to serve: what the proxy reads per request, and the certificates.
pub struct Compiled {
    pub runtime: Runtime,
    pub certs: CertStore,
}

/// Every problem found so far, each as `file:line: key: why`.
struct Problems<'a> {
    config: &'a Config,
    found: Vec<String>,
}

impl Problems<'_> {
    fn at(&mut self, key: &str, why: impl std::fmt::Display) {
        self.found
            .push(format!("{}: {why}", self.config.locate(key)));
    }

    fn invalid(&mut self, i: Invalid) {
        self.at(&i.key, i.why);
    }

    fn ok(&self) -> bool {
        self.found.is_empty()
    }
}

/// Compiles `config`, reusing the upstreams, key fetcher and Redis connection of `previous`
/// where their settings did not change (health state and verified-token caches survive a
/// reload).
pub fn compile(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Arc<Metrics>,
) -> Result<Compiled, ConfigError> {
    let s = config.settings();
    let mut p = Problems {
        config,
        found: Vec::new(),
    };
    listen(s, &mut p);
    server(s, &mut p);
    admin(s, &mut p);
    tls(s, config.env, &mut p);
    let trusted = trusted_proxies(s, &mut p);
    let jwks = jwt(s, previous, metrics, &mut p);
    let upstreams = upstreams(s, previous, &mut p);
    let policies = cors_policies(s, &mut p);
    let (limits, redis) = limits(s, previous, metrics, &mut p);
    let routes = routes(s, &upstreams, &policies, &limits, metrics, &mut p);
    let (Some(jwks), true) = (jwks, p.ok()) else {
        return Err(ConfigError(p.found));
    };
    let certs = crate::tls::load_for(s).map_err(|i| {
        p.invalid(i);
        ConfigError(std::mem::take(&mut p.found))
    })?;
    let runtime = Runtime {
        settings: s.clone(),
        jwks,
        upstreams,
        routes,
        limits,
        redis,
        trusted,
        hsts: headers::hsts_value(s.tls.hsts_max_age_seconds),
        head: HeadLimits {
            max_uri_bytes: s.server.max_uri_bytes,
            max_header_bytes: s.server.max_header_bytes,
        },
        keepalive_secs: s.server.keepalive_timeout_seconds,
    };
    Ok(Compiled { runtime, certs })
}

/// `server.trusted_proxies`: whose `X-Forwarded-For` is believed.
fn trusted_proxies(s: &Settings, p: &mut Problems) -> TrustedProxies {
    TrustedProxies::parse(&s.server.trusted_proxies).unwrap_or_else(|refused| {
        for (i, why) in refused {
            p.at(&format!("server.trusted_proxies.{i}"), why);
        }
        TrustedProxies::default()
    })
}

/// `[jwt]`: the token policy, and the key fetcher with its key files read.
fn jwt(
    s: &Settings,
    previous: Option<&Runtime>,
    metrics: &Arc<Metrics>,
    p: &mut Problems,
) -> Option<Arc<Jwks>> {
    let j = &s.jwt;
    if j.issuer.is_empty() {
        p.at("jwt.issuer", "must name the issuer of access tokens");
    }
    if j.audience.is_empty() {
        p.at("jwt.audience", "must not be empty");
    }
    // 0 would let every request with an unknown kid (anyone can forge one) trigger a fetch.
    if j.min_refetch_seconds == 0 {
        p.at(
            "jwt.min_refetch_seconds",
            "must be at least 1 (tokens naming unknown keys would each trigger a JWKS fetch)",
        );
    }
    if j.refresh_seconds == 0 {
        p.at("jwt.refresh_seconds", "must be at least 1");
    }
    if j.leeway_seconds > gatehouse_common::jwt::MAX_LEEWAY_SECS {
        p.at("jwt.leeway_seconds", "must be at most 30");
    }
    for (i, a) in j.algorithms.iter().enumerate() {
        use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
        match a.parse::<jsonwebtoken::Algorithm>() {
            Ok(HS256 | HS384 | HS512) => p.at(
                &format!("jwt.algorithms.{i}"),
                "symmetric algorithms cannot come from a JWKS",
            ),
            Ok(_) => {}
            Err(_) => p.at(
                &format!("jwt.algorithms.{i}"),
                format!("{a:?} is not a JWS algorithm"),
            ),
        }
    }
    if j.jwks_url.is_empty() && j.key_files.is_empty() {
        p.at(
            "jwt.jwks_url",
            "set a JWKS URL or at least one [[jwt.key_files]]",
        );
    }
    match previous.filter(|prev| prev.settings.jwt == *j) {
        Some(prev) => Some(prev.jwks.clone()),
        None => match Jwks::from_settings(j, metrics.clone()) {
            Ok(jwks) => Some(Arc::new(jwks)),
            Err(invalid) => {
                invalid.into_iter().for_each(|i| p.invalid(i));
                None
            }
        },
    }
}

/// `[upstreams.*]`: targets resolved, balancers built (unchanged ones kept from `previous`).
fn upstreams(
    s: &Settings,
    previous: Option<&Runtime>,
    p: &mut Problems,
) -> HashMap<String, Arc<UpstreamRt>> {
    let mut out = HashMap::new();
    for (name, u) in &s.upstreams {
        if u.targets.is_empty() {
            p.at(
                &format!("upstreams.{name}.targets"),
                "needs at least one host:port",
            );
            continue;
        }
        let malformed: Vec<usize> = (0..u.targets.len())
            .filter(|&i| !is_target(&u.targets[i]))
            .collect();
        for &i in &malformed {
            p.at(
                &format!("upstreams.{name}.targets.{i}"),
                format!("{:?} is not IP:port or host:port", u.targets[i]),
            );
        }
        if !malformed.is_empty() {
            continue;
        }
        let old = previous.and_then(|prev| prev.upstreams.get(name));
        match UpstreamRt::reuse_or_new(name, u, old) {
            Ok(up) => {
                out.insert(name.clone(), up);
            }
            Err(i) => p.invalid(i),
        }
    }
    out
}

/// `IP:port`, or `host:port` with a DNS name (resolved at start-up, on every reload and every
/// 15 s while running).
fn is_target(t: &str) -> bool {
    if t.parse::<SocketAddr>().is_ok() {
        return true;
    }
    t.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok_and(|p| p > 0) && crate::acme::check_domain(host).is_ok()
    })
}

/// `[cors.*]`: each policy compiled once, by name.
fn cors_policies(s: &Settings, p: &mut Problems) -> BTreeMap<String, cors::Policy> {
    let mut out = BTreeMap::new();
    for (name, c) in &s.cors {
        match cors::Policy::compile(c) {
            Ok(policy) => {
                out.insert(name.clone(), policy);
            }
            Err(refused) => {
                for (key, why) in refused {
                    p.at(&format!("cors.{name}.{key}"), why);
                }
            }
        }
    }
    out
}

/// `[limits.*]` and `[redis]`: the buckets, and the Redis connection of shared ones (kept
/// from `previous` while the URL is the same).
fn limits(
    s: &Settings,
    previous: Option<&Runtime>,
    metrics: &Arc<Metrics>,
    p: &mut Problems,
) -> (Limits, Option<Arc<RedisLimits>>) {
    for (name, l) in &s.limits {
        let rate = match (l.per_second, l.burst, l.per_minute) {
            (0, _, _) | (_, 0, _) => Some("per_second and burst must be at least 1"),
            (_, _, n) if n > 60_000 => Some("per_minute must be at most 60000 (use per_second)"),
            (n, _, 0) if n > 1_000_000 => Some("per_second must be at most 1000000"),
            _ => None,
        };
        if let Some(why) = rate {
            p.at(&format!("limits.{name}"), why);
        }
        match l.ipv6_prefix {
            Some(_) if l.key != LimitKey::Ip => p.at(
                &format!("limits.{name}.ipv6_prefix"),
                "only limits with key = \"ip\" are keyed by address",
            ),
            // Shorter than /32 puts whole providers into one bucket.
            Some(n) if !(32..=128).contains(&n) => p.at(
                &format!("limits.{name}.ipv6_prefix"),
                format!("{n} is not a prefix length between 32 and 128"),
            ),
            _ => {}
        }
        if l.store == LimitStore::Redis && s.redis.url.is_empty() {
            p.at(
                &format!("limits.{name}.store"),
                "\"redis\" needs [redis] url",
            );
        }
    }
    let url = &s.redis.url;
    let redis = if url.is_empty() {
        None
    } else if !url.starts_with("redis://") {
        p.at(
            "redis.url",
            "must be a redis://host:port URL (Redis on the private network)",
        );
        None
    } else {
        match previous
            .and_then(|prev| prev.redis.clone())
            .filter(|r| r.url == *url)
        {
            Some(r) => Some(r),
            None => RedisLimits::new(&s.redis, metrics)
                .map(Arc::new)
                .map_err(|i| p.invalid(i))
                .ok(),
        }
    };
    (Limits::new(&s.limits), redis)
}

/// `[[routes]]`: each with the CORS policy, limits and upstream it names resolved.
fn routes(
    s: &Settings,
    upstreams: &HashMap<String, Arc<UpstreamRt>>,
    policies: &BTreeMap<String, cors::Policy>,
    limits: &Limits,
    metrics: &Metrics,
    p: &mut Problems,
) -> Vec<RouteRt> {
    if s.routes.is_empty() {
        p.at("routes", "at least one [[routes]] is needed");
    }
    let mut out = Vec::new();
    for (i, r) in s.routes.iter().enumerate() {
        let key = |k: &str| format!("routes.{i}.{k}");
        if !r.prefix.starts_with('/') {
            p.at(&key("prefix"), "must start with /");
        }
        for (j, m) in r.methods.iter().enumerate() {
            if m.parse::<http::Method>().is_err() {
                p.at(
                    &format!("routes.{i}.methods.{j}"),
                    format!("{m:?} is not an HTTP method"),
                );
            } else if *m != m.to_ascii_uppercase() {
                // RFC 9110 §9.1: method names are case-sensitive; "get" would never match GET.
                p.at(
                    &format!("routes.{i}.methods.{j}"),
                    format!(
                        "{m:?}: methods are case-sensitive, write {:?}",
                        m.to_ascii_uppercase()
                    ),
                );
            }
        }
        if let Some(pc) = &r.path_claim {
            if r.auth != Auth::Jwt {
                p.at(&key("path_claim"), "needs auth = \"jwt\"");
            }
            if !pc.contains("{sub}") || !pc.starts_with('/') {
                p.at(&key("path_claim"), "must be a path like /api/users/{sub}/");
            }
        }
        let upstream = upstreams.get(&r.upstream).cloned();
        if upstream.is_none() && !s.upstreams.contains_key(&r.upstream) {
            p.at(&key("upstream"), format!("no [upstreams.{}]", r.upstream));
        }
        let cors = match &r.cors {
            Some(c) if !s.cors.contains_key(c) => {
                p.at(&key("cors"), format!("no [cors.{c}]"));
                None
            }
            Some(c) => policies.get(c).cloned(),
            None => None,
        };
        let mut route_limits = Vec::new();
        for l in &r.limits {
            match (s.limits.get(l), limits.get(l)) {
                (Some(limit), _) if limit.key == LimitKey::Subject && r.auth != Auth::Jwt => p.at(
                    &key("limits"),
                    format!("limit {l:?} is keyed by subject but the route has no auth"),
                ),
                (Some(_), Some(named)) => route_limits.push(named.clone()),
                _ => p.at(&key("limits"), format!("no [limits.{l}]")),
            }
        }
        // A route whose upstream failed to build was reported there; it is not served.
        if let Some(upstream) = upstream {
            out.push(RouteRt {
                cfg: r.clone(),
                cors,
                limits: route_limits,
                body_limit: r.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT),
                upstream,
                metrics: Arc::new(RouteMetrics::new(metrics, &r.prefix)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use gatehouse_common::config::Environment;

    use super::*;

    fn compile_text(text: &str) -> Result<Compiled, Vec<String>> {
        let path =
            std::env::temp_dir().join(format!("gw-compile-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, text).map_err(|e| vec![e.to_string()])?;
        let config = crate::settings::load(&path, Environment::Development).map_err(|e| e.0);
        let _ = std::fs::remove_file(&path);
        let metrics = Arc::new(Metrics::new().map_err(|e| vec![e.to_string()])?);
        compile(&config?, None, &metrics).map_err(|e| e.0)
    }

    #[test]
    fn every_problem_of_every_section_is_reported_in_one_pass_with_its_line() {
        let errors = compile_text(
            "[listen]\nhttps = \"\"\nhttp_mode = \"proxy\"\n\n\
             [server]\ntrusted_proxies = [\"10.0.0.0/8, nonsense\"]\n\n\
             [jwt]\nissuer = \"https://api.example.com\"\njwks_ca_file = \"/nonexistent/ca.pem\"\n\n\
             [[jwt.key_files]]\nkid = \"k\"\nalgorithm = \"EdDSA\"\npath = \"/nonexistent/key.pem\"\n\n\
             [cors.web]\norigins = [\"https://*.example.com\"]\ncredentials = true\n\
             methods = [\"GET\", \"GET ALL\"]\nheaders = [\"x ok\"]\n\
             expose_headers = [\"x-request-id\", \"x-bad\\u0001\"]\n\n\
             [upstreams.api]\ntargets = [\"127.0.0.1:8000\"]\n\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"api\"\ncors = \"web\"\nlimits = [\"missing\"]\n",
        )
        .err()
        .unwrap_or_default();
        for needle in [
            ":6: server.trusted_proxies.0: \"nonsense\" is not an IP address or CIDR",
            ":10: jwt.jwks_ca_file: /nonexistent/ca.pem",
            ":15: jwt.key_files.0.path: /nonexistent/key.pem: cannot read",
            ":18: cors.web.origins.0: credentials are only allowed with exact origins",
            ":20: cors.web.methods.1: \"GET ALL\" is not an HTTP method",
            ":21: cors.web.headers.0: \"x ok\" is not a header name",
            ":22: cors.web.expose_headers.1: \"x-bad\\u{1}\" is not a header name",
            ":31: routes.0.limits: no [limits.missing]",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle}: {errors:#?}"
            );
        }
    }

    #[test]
    fn a_good_configuration_compiles_into_its_routes() {
        let compiled = compile_text(
            "[listen]\nhttps = \"\"\nhttp_mode = \"proxy\"\n\n[jwt]\nissuer = \"i\"\n\n\
             [limits.ip]\nper_second = 5\n\n[upstreams.api]\ntargets = [\"127.0.0.1:8000\"]\n\n\
             [[routes]]\nprefix = \"/api/\"\nupstream = \"api\"\nlimits = [\"ip\"]\nbody_limit_bytes = 10\n",
        );
        let Ok(c) = compiled else {
            panic!("{compiled:?}", compiled = compiled.err());
        };
        let route = &c.runtime.routes[0];
        assert_eq!(route.cfg.prefix, "/api/");
        assert_eq!(route.limits[0].name, "ip");
        assert_eq!(route.body_limit, 10);
        assert!(Arc::ptr_eq(&route.upstream, &c.runtime.upstreams["api"]));
    }
}
