//! The `ProxyHttp` implementation: one short method per phase. `request_filter` runs the stages
//! of `stages.rs` in order — admit the head, route, CORS (preflights answered here), declared
//! body size, per-client and global limits, then on JWT routes authenticate, path claim and
//! per-subject limits — and any [`Rejection`] is answered in one place, [`Gateway::refuse`].
//! The later phases pick the upstream target, bound the attempt by its deadlines, set the
//! forwarding headers and the security headers, and write the access log line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use gatehouse_common::jwt::AccessClaims;
use gatehouse_common::problem;
use gatehouse_common::request_id;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::acme::{Acme, CHALLENGE_PREFIX};
use crate::cors;
use crate::headers;
use crate::metrics::{Metrics, RouteMetrics, UNMATCHED};
use crate::rejection::Rejection;
use crate::runtime::{RouteRt, Runtime};
use crate::settings::{Auth, DEFAULT_BODY_LIMIT, LimitKey};
use crate::stages::{self, Cors};

#[derive(Clone)]
pub struct Gateway {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub acme: Arc<Acme>,
    /// The request series of requests no route matched (`route="unmatched"`).
    pub unmatched: Arc<RouteMetrics>,
}

/// How a request ended, for the access log's `decision` (and `limit`).
#[derive(Debug, Clone)]
pub enum Outcome {
    Forwarded,
    AcmeChallenge,
    Preflight,
    Refused(Rejection),
}

impl Outcome {
    pub fn decision(&self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::AcmeChallenge => "acme_challenge",
            Self::Preflight => "preflight",
            Self::Refused(r) => r.reason(),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    rt: Option<Arc<Runtime>>,
    /// Made (or accepted) once; the same bytes go upstream, on the response and in the log.
    request_id: HeaderValue,
    client_ip: Option<IpAddr>,
    route: Option<usize>,
    cors_headers: cors::Headers,
    /// The verified token's claims (JWT routes).
    user: Option<Arc<AccessClaims>>,
    outcome: Outcome,
    body_bytes: usize,
    connect_failures: usize,
    /// The upstream target of the current attempt (released when the request ends).
    target: Option<SocketAddr>,
    /// The request came over TLS here or at a trusted proxy in front.
    forwarded_https: bool,
    /// Status of the upstream's answer, for passive ejection on 5xx runs.
    upstream_status: Option<u16>,
}

/// What the stages decided for a request that was not refused.
enum Admitted {
    Forward,
    /// A CORS preflight, answered here with 204 and the CORS headers.
    Preflight,
}

/// The request stages in order (`stages.rs`); the first refusal stops the request.
async fn admit(rt: &Runtime, req: &RequestHeader, ctx: &mut Ctx) -> Result<Admitted, Rejection> {
    let (method, uri, headers) = (&req.method, &req.uri, &req.headers);
    stages::admit_head(rt.head, method, uri, req.raw_path(), headers)?;
    let index = stages::route(&rt.routes, method, uri, headers)?;
    ctx.route = Some(index);
    let route = &rt.routes[index];
    match stages::cors(route, method, headers)? {
        Cors::Preflight(h) => {
            ctx.cors_headers = h;
            return Ok(Admitted::Preflight);
        }
        Cors::Forward(h) => ctx.cors_headers = h,
    }
    stages::declared_body(route, headers)?;
    let redis = rt.redis.as_deref();
    // Only the stages of the keys the route has limits for run (each is a future of its own).
    if route.limited_by(LimitKey::Ip) {
        stages::limit(route, redis, LimitKey::Ip, ctx.client_ip, None).await?;
    }
    if route.limited_by(LimitKey::Global) {
        stages::limit(route, redis, LimitKey::Global, None, None).await?;
    }
    if route.cfg.auth == Auth::Jwt {
        let claims = ctx
            .user
            .insert(stages::authenticate(&rt.jwks, headers).await?);
        stages::path_claim(route, uri.path(), &claims.sub)?;
        if route.limited_by(LimitKey::Subject) {
            let subject = claims.sub_header();
            stages::limit(route, redis, LimitKey::Subject, None, subject).await?;
        }
    }
    Ok(Admitted::Forward)
}

/// Writes a local answer's header and its body (none when empty), ending the request.
async fn write_local(session: &mut Session, resp: ResponseHeader, bytes: Vec<u8>) -> Result<bool> {
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

/// Whether the request announces a body (Pingora would read and discard it before reusing
/// the connection).
fn has_body(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

impl Ctx {
    /// The request id as text (it is always visible ASCII: `request_id.rs`).
    fn rid(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The verified subject, or "" (for logs).
    fn user_id(&self) -> &str {
        self.user.as_ref().map_or("", |c| c.sub.as_str())
    }
}

impl Gateway {
    fn route<'a>(&self, ctx: &'a Ctx) -> Option<&'a RouteRt> {
        ctx.rt
            .as_ref()
            .zip(ctx.route)
            .and_then(|(rt, i)| rt.routes.get(i))
    }

    /// Who is asking: the client IP (`client_ip.rs`: the peer, or the right-most untrusted
    /// `X-Forwarded-For` hop behind a trusted proxy), the request id (kept only from a trusted
    /// proxy), whether it came over HTTPS. Then every identity header a client may not send
    /// is removed, before anything reads one.
    fn identify(&self, session: &mut Session, ctx: &mut Ctx, rt: &Arc<Runtime>) {
        session.set_keepalive(Some(rt.keepalive_secs));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted_peer = peer.is_some_and(|p| rt.trusted.trusts(p));
        let req = session.req_header();
        ctx.client_ip = peer.map(|p| rt.trusted.client_ip(p, &req.headers));
        let id = if trusted_peer {
            request_id::accept_or_generate(
                req.headers
                    .get(&headers::X_REQUEST_ID)
                    .map(|v| v.as_bytes()),
            )
        } else {
            request_id::generate()
        };
        ctx.request_id = headers::request_id_value(id);
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
                    .get(&headers::X_FORWARDED_PROTO)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        headers::strip_spoofable(session.req_header_mut());
    }

    /// Request id, security, CORS headers: on every response, local or proxied (HSTS only on
    /// what reaches the client over HTTPS, here or at a trusted proxy in front).
    fn finish_headers(&self, resp: &mut ResponseHeader, ctx: &Ctx) {
        let hsts = ctx
            .forwarded_https
            .then(|| ctx.rt.as_ref().map_or(&headers::DEFAULT_HSTS, |r| &r.hsts));
        let authenticated = self.route(ctx).is_some_and(|r| r.cfg.auth == Auth::Jwt);
        headers::secure(resp, hsts, authenticated);
        let _ = resp.insert_header(&headers::X_REQUEST_ID, ctx.request_id.clone());
        for (k, v) in &ctx.cors_headers {
            let _ = resp.insert_header(k, v.clone());
        }
    }

    /// Writes a local answer with `bytes` as its body (none when empty) and ends the request.
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
            resp.insert_header(&header::CONTENT_TYPE, content_type)?;
        }
        // A local answer must carry its length or an HTTP/1.1 client waits for more.
        resp.insert_header(&header::CONTENT_LENGTH, bytes.len().to_string())?;
        self.finish_headers(&mut resp, ctx);
        for (k, v) in extra {
            resp.insert_header(*k, v.as_str())?;
        }
        // Boxed: every future that may answer locally would otherwise hold the writes' state (a
        // kilobyte) inline, `request_filter`'s among them, which `async_trait` moves into a box
        // of its own on every request, forwarded or not.
        Box::pin(write_local(session, resp, bytes)).await
    }

    /// The one place a rejection is answered: logged where it says more than the access line,
    /// counted (`rejections_total{reason}`, `rate_limited_total{limit}`), and written as
    /// problem+json with its own headers, the CORS and the security headers.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Rejection) -> Result<bool> {
        match &r {
            Rejection::InvalidToken(why) => {
                tracing::info!(request_id = %ctx.rid(), reason = why.reason(), "access token rejected");
            }
            Rejection::PathClaim => {
                tracing::warn!(request_id = %ctx.rid(), user_id = %ctx.user_id(), "authorization denied at the edge: path is not the token subject");
            }
            _ => {}
        }
        if r.is_refusal() {
            self.metrics.reject(r.reason(), r.limit());
        }
        let status = r.status();
        let body = r.problem().request_id(ctx.rid()).to_bytes();
        let extra = r.headers();
        ctx.outcome = Outcome::Refused(r);
        self.respond_bytes(session, ctx, status, problem::CONTENT_TYPE, body, &extra)
            .await
    }

    /// ACME HTTP-01 (plain-HTTP proxy mode: this listener is the port-80 one), from memory.
    async fn answer_challenge(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.outcome = Outcome::AcmeChallenge;
        let (status, body) = match self.acme.http01(session.req_header().uri.path()) {
            Some(answer) => (200, answer.into_bytes()),
            None => (404, b"no such challenge\n".to_vec()),
        };
        self.respond_bytes(session, ctx, status, "application/octet-stream", body, &[])
            .await
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            rt: None,
            request_id: HeaderValue::from_static(""),
            client_ip: None,
            route: None,
            cors_headers: Vec::new(),
            user: None,
            outcome: Outcome::Forwarded,
            body_bytes: 0,
            connect_failures: 0,
            target: None,
            forwarded_https: false,
            upstream_status: None,
        }
    }

    /// No downstream modules: Pingora's default is a response-compression module that is
    /// built and called for every request even when disabled, and the gateway never compresses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        crate::conn::header_complete(session.stream());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let rt = self.runtime.load_full();
        self.identify(session, ctx, &rt);
        if session
            .req_header()
            .uri
            .path()
            .starts_with(CHALLENGE_PREFIX)
        {
            return self.answer_challenge(session, ctx).await;
        }
        match admit(&rt, session.req_header(), ctx).await {
            Ok(Admitted::Forward) => Ok(false),
            Ok(Admitted::Preflight) => {
                ctx.outcome = Outcome::Preflight;
                self.respond_bytes(session, ctx, 204, "", Vec::new(), &[])
                    .await
            }
            Err(r) => {
                // A rejected upload is not read and discarded to reuse the connection: it is
                // closed. After ambiguous framing (RFC 9112 §6.3) nobody knows where the next
                // request starts: closed too.
                if r.closes_connection() || has_body(session.req_header()) {
                    session.set_keepalive(None);
                }
                self.refuse(session, ctx, r).await
            }
        }
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
            ctx.outcome = Outcome::Refused(Rejection::BodyTooLarge { max: limit });
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
            ctx.outcome = Outcome::Refused(Rejection::NoHealthyTarget);
            return Err(Error::explain(
                HTTPStatus(503),
                "no healthy upstream target",
            ));
        };
        ctx.target = Some(target);
        // Built in its box: the peer is ~470 bytes, and a peer made on the stack was copied in.
        let mut peer = Box::new(HttpPeer::new(target, false, String::new()));
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
            ctx.outcome = Outcome::Refused(Rejection::UpstreamTimeout);
            return Err(Error::explain(HTTPStatus(504), "total upstream timeout"));
        }
        peer.options.connection_timeout = Some(up.connect.min(left));
        peer.options.read_timeout = Some(route_timeout.unwrap_or(up.read).min(left));
        peer.options.write_timeout = Some(route_timeout.unwrap_or(up.write).min(left));
        peer.options.idle_timeout = Some(up.idle);
        Ok(peer)
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
        let proto = if ctx.forwarded_https {
            &headers::HTTPS
        } else {
            &headers::HTTP
        };
        // Every one of these names was removed from the client's request (`strip_spoofable`,
        // of which this is a copy), so each is added as new, beside the header map rather than
        // hashed into it (vendored Pingora patch 18).
        let client = ctx
            .client_ip
            .and_then(|ip| crate::conn::address_value(session.stream(), ip, headers::ip_value));
        if let Some(ip) = client {
            upstream.append_new_header(&headers::X_FORWARDED_FOR, ip);
        }
        upstream.append_new_header(&headers::X_FORWARDED_PROTO, proto.clone());
        if let Some(host) = session.req_header().headers.get(header::HOST).cloned() {
            upstream.append_new_header(&headers::X_FORWARDED_HOST, host);
        }
        upstream.append_new_header(&headers::X_REQUEST_ID, ctx.request_id.clone());
        if let Some(sub) = ctx.user.as_ref().and_then(|c| c.sub_header()) {
            upstream.append_new_header(&headers::X_USER_ID, sub.clone());
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
            ctx.outcome = Outcome::Refused(Rejection::ResponseDeadline);
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
            let _ = resp.insert_header(&header::CONNECTION, "close");
        }
        self.finish_headers(resp, ctx);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // A phase that failed on purpose said why; otherwise Pingora's error decides.
        let rejection = match &ctx.outcome {
            Outcome::Refused(r) => Some(r.clone()),
            _ => Rejection::from_proxy_error(e.etype(), e.esource()),
        };
        // The connection is not reused after a failed proxy attempt: say so, or a keep-alive
        // client sends its next request into a closing socket.
        session.set_keepalive(None);
        let Some(r) = rejection else {
            // The client went away: nobody to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = r.status();
        let _ = self.refuse(session, ctx, r).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let target = ctx.target.take();
        let route = self.route(ctx);
        if let (Some(r), Some(target)) = (route, target) {
            r.upstream.release(target, ctx.upstream_status);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        route
            .map_or(&*self.unmatched, |r| &*r.metrics)
            .observe(status, elapsed);
        tracing::info!(
            target: "access",
            request_id = %ctx.rid(),
            client_ip = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
            method = %session.req_header().method,
            route = %route.map_or(UNMATCHED, |r| r.cfg.prefix.as_str()),
            upstream = %route.map_or("", |r| r.upstream.name.as_str()),
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            user_id = %ctx.user_id(),
            decision = ctx.outcome.decision(),
            limit = match &ctx.outcome {
                Outcome::Refused(r) => r.limit().unwrap_or(""),
                _ => "",
            },
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
