//! The `ProxyHttp` implementation: one short method per phase, each calling the pure
//! decisions of the other modules. Order per request (DESIGN.md): request id → header hygiene
//! → limits (URI, body) → route → CORS (preflight answered here) → per-IP rate limits → JWT →
//! path claim → per-subject rate limits → forward.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_common::jwt::Rejection;
use gatehouse_common::problem::{self, Problem};
use gatehouse_common::request_id;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::acme::{Acme, CHALLENGE_PREFIX};
use crate::admission::{self, HeadLimits};
use crate::client_ip::TrustedProxies;
use crate::cors::{self, Outcome};
use crate::jwks::Jwks;
use crate::limits::{self, Limits, Named, Verdict};
use crate::metrics::Metrics;
use crate::settings::{Auth, Balance, DEFAULT_BODY_LIMIT, LimitKey, Route, Settings, Upstream};
use crate::{headers, routing};

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
    health_loop: AtomicBool,
    targets_state: Mutex<HashMap<SocketAddr, TargetState>>,
}

/// Passive health and load of one target.
#[derive(Default)]
struct TargetState {
    in_flight: usize,
    ejected_until: Option<Instant>,
    consecutive_5xx: u32,
}

/// The addresses `targets` stand for now (`host:port` names through the system resolver).
pub fn resolve(targets: &[String]) -> Result<BTreeSet<SocketAddr>, String> {
    let mut out = BTreeSet::new();
    for t in targets {
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(t.as_str())
            .map_err(|e| format!("{t}: cannot resolve: {e}"))?;
        out.extend(addrs);
    }
    Ok(out)
}

impl UpstreamRt {
    pub fn new(name: &str, u: &Upstream) -> Result<Self, String> {
        let err = |e: &dyn std::fmt::Display| format!("upstreams.{name}: {e}");
        let addresses = resolve(&u.targets).map_err(|e| err(&e))?;
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addresses.iter().copied())
            .map_err(|e| err(&e))?;
        let mut hc = HttpHealthCheck::new("localhost", false);
        let mut req =
            RequestHeader::build("GET", u.health_path.as_bytes(), None).map_err(|e| err(&e))?;
        req.insert_header("host", "localhost")
            .map_err(|e| err(&e))?;
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
        let now = Instant::now();
        let mut state = self.targets_state.lock().unwrap_or_else(|p| p.into_inner());
        let usable = |a: &SocketAddr, state: &HashMap<SocketAddr, TargetState>| {
            state
                .get(a)
                .and_then(|t| t.ejected_until)
                .is_none_or(|until| until <= now)
        };
        let chosen = match self.settings.balance {
            Balance::RoundRobin => self
                .lb
                .select_with(b"", 256, |b, healthy| {
                    healthy && b.addr.as_inet().is_some_and(|a| usable(a, &state))
                })
                .or_else(|| self.lb.select(b"", 256))
                .and_then(|b| b.addr.as_inet().copied()),
            Balance::LeastConnections => {
                let backends = self.lb.backends();
                let healthy: Vec<SocketAddr> = backends
                    .get_backend()
                    .iter()
                    .filter(|b| backends.ready(b))
                    .filter_map(|b| b.addr.as_inet().copied())
                    .collect();
                let preferred: Vec<SocketAddr> = healthy
                    .iter()
                    .copied()
                    .filter(|a| usable(a, &state))
                    .collect();
                let pool = if preferred.is_empty() {
                    healthy
                } else {
                    preferred
                };
                pool.into_iter()
                    .min_by_key(|a| state.get(a).map_or(0, |t| t.in_flight))
            }
        }?;
        state.entry(chosen).or_default().in_flight += 1;
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
        state.entry(addr).or_default().ejected_until =
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
                let pause = Duration::from_millis(up.settings.health_interval_ms.max(50));
                drop(up);
                tokio::time::sleep(pause).await;
            }
        });
    }

    pub fn healthy_targets(&self) -> usize {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }
}

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

#[derive(Clone)]
pub struct Gateway {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub acme: Arc<Acme>,
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    rt: Option<Arc<Runtime>>,
    request_id: String,
    client_ip: Option<IpAddr>,
    route: Option<usize>,
    cors_headers: cors::Headers,
    user_id: Option<String>,
    decision: &'static str,
    body_bytes: usize,
    connect_failures: usize,
    /// The upstream target of the current attempt (released when the request ends).
    target: Option<SocketAddr>,
    failure: Option<(u16, &'static str, &'static str)>,
    /// The request came over TLS here or at a trusted proxy in front.
    forwarded_https: bool,
    /// Status of the upstream's answer, for passive ejection on 5xx runs.
    upstream_status: Option<u16>,
}

fn problem_for(
    status: u16,
    kind: &'static str,
    title: &'static str,
    detail: impl Into<String>,
) -> Problem {
    Problem::new(status, kind, title).detail(detail)
}

impl Gateway {
    fn route<'a>(&self, ctx: &'a Ctx) -> Option<&'a RouteRt> {
        ctx.rt
            .as_ref()
            .zip(ctx.route)
            .and_then(|(rt, i)| rt.routes.get(i))
    }

    fn route_label<'a>(&self, ctx: &'a Ctx) -> &'a str {
        self.route(ctx)
            .map_or("unmatched", |r| r.cfg.prefix.as_str())
    }

    /// Request id, security, CORS headers: on every response, local or proxied.
    fn finish_headers(&self, resp: &mut ResponseHeader, ctx: &Ctx) {
        let hsts = ctx
            .rt
            .as_ref()
            .map(|r| r.hsts.as_str())
            .unwrap_or("max-age=31536000");
        let authenticated = self.route(ctx).is_some_and(|r| r.cfg.auth == Auth::Jwt);
        headers::secure(resp, hsts, authenticated);
        let _ = resp.insert_header("x-request-id", ctx.request_id.as_str());
        for (k, v) in &ctx.cors_headers {
            let _ = resp.insert_header(*k, v.as_str());
        }
    }

    /// Writes a local answer (problem+json or empty) and ends the request here.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Option<Problem>,
        extra: &[(&'static str, String)],
    ) -> Result<bool> {
        let bytes = body
            .map(|p| p.request_id(ctx.request_id.clone()).to_bytes())
            .unwrap_or_default();
        self.respond_bytes(session, ctx, status, problem::CONTENT_TYPE, bytes, extra)
            .await
    }

    /// Writes a local answer with `bytes` as its body (none when empty).
    async fn respond_bytes(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        content_type: &str,
        bytes: Vec<u8>,
        extra: &[(&'static str, String)],
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(status, Some(8))?;
        if !bytes.is_empty() {
            resp.insert_header("content-type", content_type)?;
        }
        // A local answer must carry its length or an HTTP/1.1 client waits for more.
        resp.insert_header("content-length", bytes.len().to_string())?;
        self.finish_headers(&mut resp, ctx);
        for (k, v) in extra {
            resp.insert_header(*k, v.as_str())?;
        }
        session
            .write_response_header(Box::new(resp), bytes.is_empty())
            .await?;
        if !bytes.is_empty() {
            session
                .write_response_body(Some(Bytes::from(bytes)), true)
                .await?;
        }
        Ok(true)
    }

    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reason: &'static str,
        p: Problem,
        extra: &[(&'static str, String)],
    ) -> Result<bool> {
        self.metrics.reject(reason);
        ctx.decision = reason;
        // Pingora would otherwise read and discard a rejected upload before reusing the
        // connection; close it instead.
        let h = &session.req_header().headers;
        let has_body = h.contains_key("transfer-encoding")
            || h.get("content-length")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        if has_body {
            session.set_keepalive(None);
        }
        let status = p.status;
        self.respond(session, ctx, status, Some(p), extra).await
    }

    async fn check_limits(
        &self,
        rt: &Runtime,
        route: &RouteRt,
        key: LimitKey,
        value: &str,
    ) -> Option<(u32, u64)> {
        let value = if key == LimitKey::Global { "" } else { value };
        for l in route.limits.iter().filter(|l| l.key == key) {
            if let Verdict::Limited {
                limit,
                retry_after_secs,
            } = l.check(value, rt.redis.as_deref()).await
            {
                return Some((limit, retry_after_secs));
            }
        }
        None
    }

    async fn verify(&self, jwks: &Jwks, token: &str) -> std::result::Result<String, Rejection> {
        let verifier = jwks.verifier();
        let claims = match verifier.verify(token) {
            Err(Rejection::UnknownKey) if jwks.refresh_for_unknown_kid().await => {
                verifier.verify(token)?
            }
            other => other?,
        };
        Ok(claims.sub.clone())
    }
}

fn rate_limited(limit: u32, retry_after: u64) -> (Problem, Vec<(&'static str, String)>) {
    (
        problem_for(
            429,
            "rate_limited",
            "Too many requests",
            "Too many requests; retry after the time in Retry-After.",
        ),
        limits::headers(limit, retry_after),
    )
}

/// The status as a metric label, without allocating.
fn status_label(status: u16) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600).map(|n| n.to_string()).collect());
    labels.get(status as usize).map_or("other", String::as_str)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            rt: None,
            request_id: String::new(),
            client_ip: None,
            route: None,
            cors_headers: Vec::new(),
            user_id: None,
            decision: "forwarded",
            body_bytes: 0,
            connect_failures: 0,
            target: None,
            failure: None,
            forwarded_https: false,
            upstream_status: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        crate::conn::header_complete(session.stream());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let rt = self.runtime.load_full();
        session.set_keepalive(Some(rt.keepalive_secs));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted_peer = peer.is_some_and(|p| rt.trusted.trusts(p));
        let req = session.req_header();
        ctx.client_ip = peer.map(|p| rt.trusted.client_ip(p, &req.headers));
        ctx.request_id = if trusted_peer {
            request_id::accept_or_generate(
                req.headers.get(request_id::HEADER).map(|v| v.as_bytes()),
            )
        } else {
            request_id::generate()
        };
        ctx.rt = Some(rt.clone());
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        // Behind a platform's TLS terminator (plain-HTTP proxy mode) the original scheme comes
        // from the trusted proxy.
        ctx.forwarded_https = tls
            || (trusted_peer
                && req
                    .headers
                    .get("x-forwarded-proto")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        // Nothing below may read a client-sent identity header.
        headers::strip_spoofable(session.req_header_mut(), false);

        let req = session.req_header();
        let path = req.uri.path().to_string();
        let method = req.method.clone();
        if path.starts_with(CHALLENGE_PREFIX) {
            // ACME HTTP-01 (plain-HTTP proxy mode: this listener is the port-80 one).
            ctx.decision = "acme_challenge";
            let (status, body) = match self.acme.http01(&path).await {
                Some(answer) => (200, answer.into_bytes()),
                None => (404, b"no such challenge\n".to_vec()),
            };
            return self
                .respond_bytes(session, ctx, status, "application/octet-stream", body, &[])
                .await;
        }
        let head_limits = HeadLimits {
            max_uri_bytes: rt.max_uri,
            max_header_bytes: rt.max_header_bytes,
        };
        if let Err(refusal) =
            admission::admit(&method, &req.uri, req.raw_path(), &req.headers, head_limits)
        {
            if refusal.closes_connection() {
                // RFC 9112 §6.3: after ambiguous framing nobody knows where the next request
                // starts; answer and close rather than guess.
                session.set_keepalive(None);
            }
            let p = problem_for(
                refusal.status(),
                refusal.kind(),
                refusal.title(),
                refusal.detail(),
            );
            return self.reject(session, ctx, refusal.decision(), p, &[]).await;
        }
        let host = req
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .or(req.uri.host());
        let Some(index) = routing::select(rt.routes.iter().map(|r| &r.cfg), host, &method, &path)
        else {
            let p = problem_for(404, "not_found", "Not found", "No route for this path.");
            return self.reject(session, ctx, "no_route", p, &[]).await;
        };
        ctx.route = Some(index);
        let route = &rt.routes[index];

        // CORS first: a preflight never carries credentials and must not meet auth or
        // per-subject limits.
        match cors::decide(route.cors.as_ref(), &method, &session.req_header().headers) {
            Outcome::Preflight(h) => {
                ctx.cors_headers = h;
                ctx.decision = "preflight";
                return self.respond(session, ctx, 204, None, &[]).await;
            }
            Outcome::PreflightRejected(why) => {
                ctx.cors_headers = vec![(cors::VARY.0, cors::VARY.1.to_string())];
                let p = problem_for(
                    403,
                    "cors_rejected",
                    "CORS preflight rejected",
                    format!("The preflight was refused: {why}."),
                );
                return self.reject(session, ctx, "cors", p, &[]).await;
            }
            Outcome::Allowed(h) => ctx.cors_headers = h,
            Outcome::Disallowed => {
                ctx.cors_headers = vec![(cors::VARY.0, cors::VARY.1.to_string())]
            }
            Outcome::NotCors => {}
        }

        let declared = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.body_limit as u64) {
            let p = problem_for(
                413,
                "payload_too_large",
                "Payload too large",
                format!(
                    "The request body must be at most {} bytes.",
                    route.body_limit
                ),
            );
            return self.reject(session, ctx, "body_too_large", p, &[]).await;
        }

        let ip = ctx.client_ip.map(|i| i.to_string()).unwrap_or_default();
        for key in [LimitKey::Ip, LimitKey::Global] {
            if let Some((limit, retry)) = self.check_limits(&rt, route, key, &ip).await {
                let (p, h) = rate_limited(limit, retry);
                return self.reject(session, ctx, "rate_limited", p, &h).await;
            }
        }

        if route.cfg.auth == Auth::Jwt {
            let token = session
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
                .map(|(_, t)| t.trim().to_string());
            let Some(token) = token else {
                let p = problem_for(
                    401,
                    "unauthorized",
                    "Authentication required",
                    "Send an access token as 'Authorization: Bearer <token>'.",
                );
                return self
                    .reject(
                        session,
                        ctx,
                        "missing_token",
                        p,
                        &[("www-authenticate", "Bearer realm=\"gatehouse\"".into())],
                    )
                    .await;
            };
            let sub = match self.verify(&rt.jwks, &token).await {
                Ok(sub) => sub,
                Err(r) => {
                    let p = match &r {
                        Rejection::Expired => problem_for(
                            401,
                            "token_expired",
                            "Access token expired",
                            "Refresh the access token.",
                        ),
                        other => problem_for(
                            401,
                            "invalid_token",
                            "Invalid access token",
                            other.to_string(),
                        ),
                    };
                    tracing::info!(request_id = %ctx.request_id, reason = r.reason(), "access token rejected");
                    let challenge = (
                        "www-authenticate",
                        "Bearer realm=\"gatehouse\", error=\"invalid_token\"".to_string(),
                    );
                    return self
                        .reject(session, ctx, "invalid_token", p, &[challenge])
                        .await;
                }
            };
            if let Some(rule) = &route.cfg.path_claim
                && !routing::path_claim_holds(rule, &path, &sub)
            {
                tracing::warn!(request_id = %ctx.request_id, user_id = %sub, "authorization denied at the edge: path is not the token subject");
                ctx.user_id = Some(sub);
                let p = problem_for(
                    403,
                    "forbidden",
                    "Forbidden",
                    "You may only access your own resources.",
                );
                return self.reject(session, ctx, "path_claim", p, &[]).await;
            }
            if let Some((limit, retry)) =
                self.check_limits(&rt, route, LimitKey::Subject, &sub).await
            {
                ctx.user_id = Some(sub);
                let (p, h) = rate_limited(limit, retry);
                return self.reject(session, ctx, "rate_limited", p, &h).await;
            }
            ctx.user_id = Some(sub);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Bodies without Content-Length (chunked, h2) are counted as they stream.
        ctx.body_bytes += body.as_ref().map_or(0, Bytes::len);
        let limit = self.route(ctx).map_or(DEFAULT_BODY_LIMIT, |r| r.body_limit);
        if ctx.body_bytes > limit {
            ctx.failure = Some((413, "payload_too_large", "Payload too large"));
            return Err(Error::explain(
                HTTPStatus(413),
                "request body over the route limit",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = self.route(ctx) else {
            return Err(Error::explain(HTTPStatus(404), "no route"));
        };
        let up = route.upstream.clone();
        if let Some(previous) = ctx.target.take() {
            up.release(previous, None);
        }
        let Some(target) = up.pick() else {
            self.metrics
                .upstream_errors
                .with_label_values(&[up.name.as_str(), "no_healthy_target"])
                .inc();
            ctx.failure = Some((503, "upstream_unavailable", "Upstream unavailable"));
            return Err(Error::explain(
                HTTPStatus(503),
                "no healthy upstream target",
            ));
        };
        ctx.target = Some(target);
        let mut peer = HttpPeer::new(target, false, String::new());
        let route_timeout = self
            .route(ctx)
            .and_then(|r| r.cfg.timeout_ms)
            .map(Duration::from_millis);
        // What the total deadline leaves caps every wait of this attempt.
        let left = up
            .total
            .map(|t| t.saturating_sub(ctx.started.elapsed()))
            .unwrap_or(Duration::MAX);
        if left.is_zero() {
            ctx.failure = Some((504, "upstream_timeout", "Upstream timed out"));
            return Err(Error::explain(HTTPStatus(504), "total upstream timeout"));
        }
        peer.options.connection_timeout = Some(up.connect.min(left));
        peer.options.read_timeout = Some(route_timeout.unwrap_or(up.read).min(left));
        peer.options.write_timeout = Some(route_timeout.unwrap_or(up.write).min(left));
        peer.options.idle_timeout = Some(up.idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream: retrying on another target is safe for any method.
        ctx.connect_failures += 1;
        let targets = self
            .route(ctx)
            .map_or(1, |r| r.upstream.settings.targets.len());
        if let Some(r) = self.route(ctx) {
            self.metrics
                .upstream_errors
                .with_label_values(&[r.upstream.name.as_str(), "connect"])
                .inc();
            if let Some(target) = ctx.target {
                r.upstream.eject(target);
            }
        }
        if ctx.connect_failures < targets.max(2) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let proto = if ctx.forwarded_https { "https" } else { "http" };
        if let Some(ip) = ctx.client_ip {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        upstream.insert_header("x-forwarded-proto", proto)?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(sub) = &ctx.user_id {
            upstream.insert_header("x-user-id", sub.as_str())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let total = self.route(ctx).and_then(|r| r.upstream.total);
        if !end_of_stream && total.is_some_and(|t| ctx.started.elapsed() > t) {
            ctx.decision = "upstream_total_timeout";
            return Err(Error::explain(
                ReadTimedout,
                "the response outlived the upstream's total_timeout_ms",
            ));
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Draining (SIGTERM or an upgrade hand-over): tell keep-alive clients to reconnect,
            // which lands them on the new process, instead of closing under them.
            session.set_keepalive(None);
            let _ = resp.insert_header("connection", "close");
        }
        self.finish_headers(resp, ctx);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, kind, title) = match (ctx.failure, e.etype(), e.esource()) {
            (Some(f), _, _) => f,
            (None, HTTPStatus(code), _) => (*code, "error", "Error"),
            (None, ConnectTimedout | ConnectRefused | ConnectError | ConnectNoRoute, _) => {
                (502, "upstream_unavailable", "Upstream unavailable")
            }
            (None, ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
                (504, "upstream_timeout", "Upstream timed out")
            }
            (None, _, ErrorSource::Upstream) => {
                (502, "upstream_unavailable", "Upstream unavailable")
            }
            (None, ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
                (0, "", "")
            }
            (None, _, ErrorSource::Downstream) => (400, "malformed_request", "Malformed request"),
            (None, _, _) => (500, "internal_error", "Internal server error"),
        };
        // The connection is not reused after a failed proxy attempt: say so, or a keep-alive
        // client sends its next request into a closing socket.
        session.set_keepalive(None);
        if status > 0 {
            ctx.decision = if status == 413 {
                "body_too_large"
            } else {
                "upstream_error"
            };
            let detail = match status {
                413 => format!(
                    "The request body must be at most {} bytes.",
                    self.route(ctx).map_or(DEFAULT_BODY_LIMIT, |r| r.body_limit)
                ),
                503 | 502 => {
                    "The service behind the gateway is not reachable right now; retry shortly."
                        .to_string()
                }
                504 => "The service behind the gateway did not answer in time.".to_string(),
                _ => title.to_string(),
            };
            let retry: Vec<(&'static str, String)> = if matches!(status, 502 | 503) {
                vec![("retry-after", "2".into())]
            } else {
                vec![]
            };
            let _ = self
                .respond(
                    session,
                    ctx,
                    status,
                    Some(problem_for(status, kind, title, detail)),
                    &retry,
                )
                .await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let upstream = self.route(ctx).map(|r| r.upstream.clone());
        if let (Some(up), Some(target)) = (upstream, ctx.target.take()) {
            up.release(target, ctx.upstream_status);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = self.route_label(ctx);
        let elapsed = ctx.started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[route, status_label(status)])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
            method = %session.req_header().method,
            route = %route,
            upstream = %self.route(ctx).map(|r| r.upstream.name.as_str()).unwrap_or(""),
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            user_id = %ctx.user_id.as_deref().unwrap_or(""),
            decision = ctx.decision,
            error = %e.map(|e| e.to_string()).unwrap_or_default(),
            "request"
        );
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // A client that goes away mid-request (no close_notify, stream reset) is not a fault
        // of ours; it still shows in the access log line.
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ConnectionClosed | ReadError | WriteError | H2Error
            )
    }
}
