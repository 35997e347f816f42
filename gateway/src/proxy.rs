//! The `ProxyHttp` implementation: one short method per phase, each calling the pure
//! decisions of the other modules. Order per request (DESIGN.md): request id → header hygiene
//! → limits (URI, body) → route → CORS (preflight answered here) → per-IP rate limits → JWT →
//! path claim → per-subject rate limits → forward.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_common::jwt::Rejection;
use gatehouse_common::problem::{self, Problem};
use gatehouse_common::request_id;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::acme::{Acme, CHALLENGE_PREFIX};
use crate::admission::{self, HeadLimits};
use crate::cors::{self, Outcome};
use crate::jwks::Jwks;
use crate::limits::{self, Verdict};
use crate::metrics::Metrics;
use crate::runtime::{RouteRt, Runtime};
use crate::settings::{Auth, DEFAULT_BODY_LIMIT, LimitKey};
use crate::{headers, routing};

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

    /// The first of the route's `key` limits that refuses this request: by client network
    /// (`ip`), verified `subject`, or one bucket (`global`).
    async fn check_limits(
        &self,
        rt: &Runtime,
        route: &RouteRt,
        key: LimitKey,
        ip: Option<IpAddr>,
        subject: &str,
    ) -> Option<(u32, u64)> {
        for l in route.limits.iter().filter(|l| l.key == key) {
            let value = match key {
                LimitKey::Ip => l.ip_key(ip),
                LimitKey::Subject => subject.to_string(),
                LimitKey::Global => String::new(),
            };
            if let Verdict::Limited {
                limit,
                retry_after_secs,
            } = l.check(&value, rt.redis.as_deref()).await
            {
                return Some((limit, retry_after_secs));
            }
        }
        None
    }

    async fn verify(&self, jwks: &Jwks, token: &str) -> std::result::Result<String, Rejection> {
        let verifier = jwks.verifier();
        let rejected_at = Instant::now();
        let claims = match verifier.verify(token) {
            // A key we do not have, or a signature that fails under the key we have for its
            // kid (the issuer may have replaced it): the JWKS may know more by now.
            Err(Rejection::UnknownKey | Rejection::BadSignature)
                if jwks.refetch_after_rejection(rejected_at).await =>
            {
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
            let (status, body) = match self.acme.http01(&path) {
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
        if let Err(refusal) = admission::admit(&method, &req.uri, &req.headers, head_limits) {
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

        for key in [LimitKey::Ip, LimitKey::Global] {
            if let Some((limit, retry)) =
                self.check_limits(&rt, route, key, ctx.client_ip, "").await
            {
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
            if let Some((limit, retry)) = self
                .check_limits(&rt, route, LimitKey::Subject, None, &sub)
                .await
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
