//! Client connections on every listener: the TLS handshake of the HTTPS listener, the
//! HTTP/1 keep-alive loop, and the limits Pingora does not have — a cap on concurrent
//! connections per listener and per client, a total deadline for each request header
//! (slowloris) and for the HTTP/2 connection preface. Pingora times out each read (60 s), so a
//! client that sends one byte a minute would otherwise hold a connection forever.
//!
//! [`Guarded`] wraps each listener's application. A connection takes a slot at accept (refused
//! before any TLS work when the listener or its client — an IPv4 address, an IPv6 /64 — is at
//! its cap), then:
//! - HTTP/1.x: `Guarded` runs the keep-alive loop itself, one `process_new_http` per request
//!   (Pingora 0.9.1 runs it inside `process_new`, out of reach of a wrapper). Between requests
//!   it waits for the next request's first bytes without a session or a header buffer, for at
//!   most the keep-alive timeout. Each request header must then be complete `header_timeout`
//!   after its first byte (the first request's clock starts when the handshake ends), like
//!   nginx's `client_header_timeout`; the application marks it complete with
//!   [`header_complete`] as soon as it is parsed. Otherwise the connection is dropped without
//!   an answer.
//! - HTTP/2: the client connection preface (RFC 9113 §3.4) must arrive within
//!   `header_timeout`; afterwards Pingora's own loop serves the streams, and its
//!   `h2_idle_timeout` (set by the server from the keep-alive timeout) closes a connection with
//!   no open stream.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::ConnectionFilter;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::settings;

/// RFC 9113 §3.4: every HTTP/2 connection starts with these 24 octets from the client.
const H2_PREFACE_LEN: usize = 24;

/// What the first read of a request reads into: Pingora's own initial header buffer size
/// (`INIT_HEADER_BUF_SIZE` in pingora-core, not exported).
const HEADER_BUF: usize = 4096;

/// Tells whether a peer is exempt from the per-client cap (a trusted proxy carries many
/// clients). Read at every accept, so a reload of `server.trusted_proxies` applies at once.
pub type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The connection counts and limits one listener shares between its filter and its app.
pub struct Limits {
    listener: &'static str,
    max: usize,
    /// 0: no per-client cap.
    per_client: usize,
    header_timeout: Duration,
    keepalive: Duration,
    active: AtomicUsize,
    /// Open connections per client key; a key is removed when its last connection closes,
    /// so the map never holds more than `max` entries.
    clients: Mutex<HashMap<ClientKey, usize>>,
    exempt: Exempt,
    gauge: IntGauge,
    refused_at_cap: IntCounter,
    refused_per_client: IntCounter,
    header_timeouts: IntCounter,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("listener", &self.listener)
            .field("max", &self.max)
            .field("per_client", &self.per_client)
            .field("header_timeout", &self.header_timeout)
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(
        listener: &'static str,
        server: &settings::Server,
        exempt: Exempt,
        metrics: &Metrics,
    ) -> Arc<Self> {
        Self::with(
            listener,
            (server.max_connections, server.max_connections_per_client),
            Duration::from_secs(server.header_timeout_seconds),
            Duration::from_secs(server.keepalive_timeout_seconds),
            exempt,
            metrics,
        )
    }

    /// `caps`: (per listener, per client).
    fn with(
        listener: &'static str,
        (max, per_client): (usize, usize),
        header_timeout: Duration,
        keepalive: Duration,
        exempt: Exempt,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let rejected = |reason| {
            metrics
                .connections_rejected
                .with_label_values(&[listener, reason])
        };
        Arc::new(Self {
            listener,
            max,
            per_client,
            header_timeout,
            keepalive,
            active: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            exempt,
            gauge: metrics.connections_active.with_label_values(&[listener]),
            refused_at_cap: rejected("max_connections"),
            refused_per_client: rejected("max_connections_per_client"),
            header_timeouts: rejected("header_timeout"),
        })
    }

    /// The per-client key of `peer`, unless the per-client cap is off or the peer is exempt.
    fn client_of(&self, peer: Option<IpAddr>) -> Option<ClientKey> {
        peer.map(|ip| ip.to_canonical())
            .filter(|ip| self.per_client > 0 && !(self.exempt)(*ip))
            .map(ClientKey::of)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, usize>> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `peer`, or `None` (counted) at either cap.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.refused_at_cap.inc();
            return None;
        }
        let client = self.client_of(peer);
        if let Some(key) = client {
            let mut clients = self.clients();
            let open = clients.entry(key).or_insert(0);
            if *open >= self.per_client {
                drop(clients);
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.refused_per_client.inc();
                return None;
            }
            *open += 1;
        }
        self.gauge.inc();
        Some(Slot {
            limits: self.clone(),
            client,
        })
    }
}

/// Held while a connection lives.
struct Slot {
    limits: Arc<Limits>,
    client: Option<ClientKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut clients = self.limits.clients();
            if let Some(open) = clients.get_mut(&key) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    clients.remove(&key);
                }
            }
        }
        self.limits.active.fetch_sub(1, Ordering::AcqRel);
        self.limits.gauge.dec();
    }
}

/// Refuses a new TCP connection at either cap before a task is spawned for it or any TLS work
/// is done. (The app takes the slot; this is the cheap early look.)
#[async_trait]
impl ConnectionFilter for Limits {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        if self.active.load(Ordering::Acquire) >= self.max {
            self.refused_at_cap.inc();
            return false;
        }
        if let Some(key) = self.client_of(addr.map(SocketAddr::ip))
            && self
                .clients()
                .get(&key)
                .is_some_and(|n| *n >= self.per_client)
        {
            self.refused_per_client.inc();
            return false;
        }
        true
    }
}

/// Whose connections count together against `server.max_connections_per_client`: an IPv4
/// address, or an IPv6 /64 — the smallest block an end site is assigned (RFC 6177), inside
/// which a host picks addresses at will (SLAAC, temporary addresses of RFC 8981), so it cannot
/// walk around the cap through its own subnet. An IPv4-mapped IPv6 address (a dual-stack
/// listener) counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a.into()),
            // The upper 64 bits: the network part of the address.
            IpAddr::V6(a) => Self::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// A listener's application with connection limits — and, on the HTTPS listener, the TLS
/// handshake — in front. The handshake happens here rather than in Pingora's listener because
/// Pingora's TLS settings cannot offer `acme-tls/1` next to h2 and http/1.1 (RFC 8737), and so
/// that the header deadline also bounds a handshake that never finishes.
///
/// The application marks each HTTP/1 request header as complete with [`header_complete`]
/// (the proxy in `early_request_filter`; a [`ServeHttp`] app through [`HeaderMarked`]);
/// a request it does not mark is dropped at its header deadline.
///
/// HTTP/1.1 pipelining: no application served here turns on Pingora's pipelining opt-in
/// (`set_pipelining_enabled`). If one did, bytes it read ahead are still parsed first (see
/// [`Guarded::serve_h1`]); from then on that connection waits for its next request inside
/// Pingora, so its idle time counts against the header deadline, and the one request during
/// which it was turned on may wait for the keep-alive timeout before a request the client
/// pipelined behind it is answered.
/// Cleartext HTTP/2 (h2c) is not offered: no listener sets `HttpServerOptions::h2c`.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: Arc<Limits>,
    tls: Option<Acceptor>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: Arc<Limits>, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self {
            inner: Arc::new(inner),
            limits,
            tls: tls.map(Acceptor::from_server_config),
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    /// Serves the whole connection and always returns `None`: a stream handed back would come
    /// round again as a new connection and take a second slot.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = self.limits.admit(peer)?;
        let stream = match &self.tls {
            None => stream,
            Some(acceptor) => {
                let handshake = acceptor.tls_handshake(Tracked::plain(stream));
                match tokio::time::timeout(self.limits.header_timeout, handshake).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        self.timed_out("TLS handshake");
                        return None;
                    }
                }
            }
        };
        // The first request (HTTP/2: the connection preface) is due `header_timeout` after the
        // handshake, or after accept on a plain listener.
        let deadline = Instant::now() + self.limits.header_timeout;
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => self.serve_h2(stream, deadline, shutdown).await,
            Some(ALPN::H1) | None => self.serve_h1(stream, deadline, shutdown).await,
            // acme-tls/1: the validation handshake was the whole exchange (RFC 8737 §3).
            Some(_) => {}
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// How the next request on an HTTP/1 connection starts.
enum Next {
    /// The connection's first request.
    First,
    /// A reused connection, with what the last session hands on (keep-alive timeout, reuses
    /// left, the application's connection context, pipelined bytes).
    Reused(Option<HttpPersistentSettings>),
}

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// The HTTP/1.x keep-alive loop: what Pingora's `process_new` does for HTTP/1 (same session
    /// set-up and hand-over between requests), one request at a time so that each gets its own
    /// header deadline, and with the wait for the next request outside any session.
    async fn serve_h1(&self, stream: Stream, first: Instant, shutdown: &ShutdownWatch) {
        let state = Arc::new(State::default());
        let mut stream: Stream = Box::new(Tracked::new(stream, state.clone()));
        let mut shutdown_rx = shutdown.clone();
        let mut next = Next::First;
        // Set once an application turned pipelining on for this connection (see below).
        let mut pipelining = false;
        loop {
            // The next request's first bytes. Waiting needs no session and no header buffer,
            // so an idle connection holds only its stream.
            let started = if pipelining {
                None
            } else {
                let (until, idle) = match next {
                    Next::First => (first, false),
                    Next::Reused(_) => (Instant::now() + self.limits.keepalive, true),
                };
                tokio::select! {
                    biased;
                    bytes = first_bytes(&mut stream) => match bytes {
                        Some(bytes) => Some(bytes),
                        // Closed between requests: the normal end of a keep-alive connection.
                        None => return,
                    },
                    () = tokio::time::sleep_until(until) => {
                        if !idle {
                            self.timed_out("request header");
                        }
                        // Idle longer than the keep-alive timeout: closed, as RFC 9112 §9.6
                        // allows at any time between requests.
                        return;
                    }
                    () = shutting_down(&mut shutdown_rx) => return,
                }
            };
            let header_deadline = match next {
                Next::First => first,
                Next::Reused(_) => Instant::now() + self.limits.header_timeout,
            };

            let mut session = ServerSession::new_http1(stream);
            match next {
                Next::First => {
                    // As Pingora: keep-alive unless the server is shutting down (the application
                    // sets its own timeout per request; Pingora reads 0 as none), and the
                    // configured limit of requests.
                    let keepalive =
                        (!*shutdown.borrow()).then(|| self.limits.keepalive.as_secs().max(1));
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
                Next::Reused(Some(settings)) => settings.apply_to_session(&mut session),
                Next::Reused(None) => {}
            }
            if let Some(bytes) = started {
                if session.pipelining_enabled() {
                    // The last session may have handed on overread bytes as this session's
                    // prefix; what was read since follows them. From now on Pingora waits for
                    // this connection's requests itself, so the prefix is never overtaken.
                    pipelining = true;
                    state.stash(bytes);
                } else {
                    session.set_pipelined_prefix(bytes);
                }
            }

            state.header_done.store(false, Ordering::Release);
            let request = self.inner.process_new_http(session, shutdown);
            tokio::pin!(request);
            // Usually the whole header came with the first bytes and the first poll parses it:
            // then no deadline timer is needed at all.
            let polled = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
            let reused = match polled {
                Poll::Ready(reused) => reused,
                Poll::Pending if state.header_done.load(Ordering::Acquire) => request.await,
                Poll::Pending => tokio::select! {
                    biased;
                    reused = &mut request => reused,
                    () = tokio::time::sleep_until(header_deadline) => {
                        if state.header_done.load(Ordering::Acquire) {
                            // A slow answer is not the client's doing; the header came in time.
                            request.await
                        } else {
                            self.timed_out("request header");
                            return;
                        }
                    }
                },
            };
            let Some(reused) = reused else { return };
            let (s, settings) = reused.consume();
            stream = s;
            next = Next::Reused(settings);
        }
    }

    /// HTTP/2: Pingora's own connection loop, dropped if the client's connection preface is
    /// not complete by `deadline`.
    async fn serve_h2(&self, stream: Stream, deadline: Instant, shutdown: &ShutdownWatch) {
        let state = Arc::new(State::h2());
        let stream: Stream = Box::new(Tracked::new(stream, state.clone()));
        // The h2 handshake reads exactly the 24 preface octets before it completes, and has no
        // deadline of its own; the idle timeout only starts once it completed.
        let connection = self.inner.process_new(stream, shutdown);
        tokio::pin!(connection);
        tokio::select! {
            biased;
            _ = &mut connection => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if state.preface_left.load(Ordering::Acquire) > 0 {
            self.timed_out("HTTP/2 connection preface");
            return;
        }
        connection.await;
    }

    fn timed_out(&self, what: &'static str) {
        self.limits.header_timeouts.inc();
        tracing::info!(
            listener = self.limits.listener,
            timeout_ms = self.limits.header_timeout.as_millis() as u64,
            "{what} not complete in time; connection closed"
        );
    }
}

/// Waits until the client sends something and returns it: the start of the next request, in
/// a buffer of the size Pingora would have used, to become the session's first bytes. `None`:
/// the client closed the connection or it failed. The scratch space lives only while the read
/// is polled, so a waiting connection holds no buffer.
async fn first_bytes(stream: &mut Stream) -> Option<BytesMut> {
    std::future::poll_fn(|cx| {
        let mut scratch = [MaybeUninit::<u8>::uninit(); HEADER_BUF];
        let mut buf = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut bytes = BytesMut::with_capacity(HEADER_BUF);
                bytes.extend_from_slice(buf.filled());
                Poll::Ready(Some(bytes))
            }
        }
    })
    .await
}

/// Resolves when the server starts shutting down (then idle connections are closed, as
/// Pingora closes them: the client reconnects to the process that carries on).
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Marks the request header on this session's connection as complete (called by the
/// application as soon as Pingora has parsed it).
pub fn header_complete(stream: Option<&Stream>) {
    if let Some(state) = stream
        .and_then(|s| (**s).as_any().downcast_ref::<Tracked>())
        .and_then(|t| t.state.as_ref())
    {
        state.header_done.store(true, Ordering::Release);
    }
}

/// A [`ServeHttp`] application (admin, redirect) that marks each request header as complete
/// before answering it.
pub struct HeaderMarked<S>(pub S);

#[async_trait]
impl<S: ServeHttp + Send + Sync> ServeHttp for HeaderMarked<S> {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        header_complete(session.stream());
        self.0.response(session).await
    }
}

/// Per-connection progress, shared between [`Guarded`] and the connection's [`Tracked`] stream.
#[derive(Debug, Default)]
struct State {
    /// HTTP/1: the current request's header was parsed.
    header_done: AtomicBool,
    /// HTTP/2: octets of the connection preface not read yet; 0 on HTTP/1.
    preface_left: AtomicUsize,
    /// Bytes to read before the stream's own (only when pipelining; see `serve_h1`).
    stashed: AtomicBool,
    stash: Mutex<Option<BytesMut>>,
}

impl State {
    fn h2() -> Self {
        Self {
            preface_left: AtomicUsize::new(H2_PREFACE_LEN),
            ..Self::default()
        }
    }

    fn stash(&self, bytes: BytesMut) {
        let mut stash = self.stash.lock().unwrap_or_else(PoisonError::into_inner);
        match stash.as_mut() {
            Some(pending) => pending.extend_from_slice(&bytes),
            None => *stash = Some(bytes),
        }
        self.stashed.store(true, Ordering::Release);
    }

    /// Moves stashed bytes into `buf`; false when there are none.
    fn unstash(&self, buf: &mut ReadBuf<'_>) -> bool {
        let mut stash = self.stash.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pending) = stash.as_mut() else {
            self.stashed.store(false, Ordering::Release);
            return false;
        };
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending.split_to(n));
        if pending.is_empty() {
            *stash = None;
            self.stashed.store(false, Ordering::Release);
        }
        true
    }
}

/// A client stream that reports progress to its connection's [`State`] (or, without state,
/// just passes through: the TCP stream under a TLS handshake).
pub struct Tracked {
    inner: Stream,
    state: Option<Arc<State>>,
}

impl Tracked {
    fn plain(inner: Stream) -> Self {
        Self { inner, state: None }
    }

    fn new(inner: Stream, state: Arc<State>) -> Self {
        Self {
            inner,
            state: Some(state),
        }
    }
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(state) = &this.state else {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        };
        if state.stashed.load(Ordering::Acquire) && state.unstash(buf) {
            return Poll::Ready(Ok(()));
        }
        let left = state.preface_left.load(Ordering::Relaxed);
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if left > 0 && read > 0 {
            state
                .preface_left
                .store(left.saturating_sub(read), Ordering::Release);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Tracked {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Tracked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Tracked {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Tracked {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Tracked {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Tracked {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Tracked {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn limits(per_client: usize, header_ms: u64, keepalive_ms: u64) -> Arc<Limits> {
        let metrics = Metrics::new().unwrap();
        let exempt: Exempt = Arc::new(|ip: IpAddr| ip == IpAddr::from([10, 0, 0, 1]));
        Limits::with(
            "test",
            (3, per_client),
            Duration::from_millis(header_ms),
            Duration::from_millis(keepalive_ms),
            exempt,
            &metrics,
        )
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_slash_64s() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        // A dual-stack listener sees IPv4 clients as mapped addresses: still one per address,
        // not all of IPv4 in one ::ffff:0:0/96.
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
    }

    #[test]
    fn the_per_client_cap_counts_open_connections_and_spares_trusted_proxies() {
        let l = limits(2, 1000, 1000);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let first = l.admit(Some(a)).unwrap();
        let second = l.admit(Some(same_64)).unwrap();
        assert!(l.admit(Some(a)).is_none(), "a third from one /64");
        assert_eq!(l.refused_per_client.get(), 1);
        let other = l.admit(Some(b)).unwrap();
        assert!(
            l.admit(Some(b)).is_none(),
            "the listener cap (3) is reached"
        );
        assert_eq!(l.refused_at_cap.get(), 1);
        drop((first, other));
        let again = l.admit(Some(a)).unwrap();
        drop((second, again));
        assert!(l.clients().is_empty(), "keys go with their last connection");
        // A trusted proxy carries many clients: only the listener cap applies.
        let proxy = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<_> = (0..3).map(|_| l.admit(Some(proxy)).unwrap()).collect();
        assert_eq!(l.active.load(Ordering::Acquire), 3);
        drop(held);
        // Also as seen on a dual-stack listener.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.admit(Some(mapped)).unwrap()).collect();
        drop(held);
        // 0 turns the per-client cap off.
        let off = limits(0, 1000, 1000);
        let held: Vec<_> = (0..3).map(|_| off.admit(Some(b)).unwrap()).collect();
        assert_eq!(held.len(), 3);
    }

    /// Answers every request with its path; `pipelining` turns Pingora's opt-in on.
    struct Paths {
        pipelining: bool,
    }

    #[async_trait]
    impl ServeHttp for Paths {
        async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
            if self.pipelining {
                session.set_pipelining_enabled(true);
            }
            let body = session.req_header().uri.path().as_bytes().to_vec();
            Response::builder()
                .status(200)
                .header("content-length", body.len().to_string())
                .body(body)
                .unwrap()
        }
    }

    /// A connection served by `Guarded` (header deadline 300 ms, keep-alive 800 ms) over an
    /// in-memory pipe; the task ends when the server closes its side.
    fn serve(pipelining: bool) -> (DuplexStream, tokio::task::JoinHandle<()>, Arc<Limits>) {
        let limits = limits(0, 300, 800);
        let app = Arc::new(Guarded::new(
            HeaderMarked(Paths { pipelining }),
            limits.clone(),
            None,
        ));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let (_tx, rx) = tokio::sync::watch::channel(false);
            app.process_new(Box::new(server), &rx).await;
        });
        (client, task, limits)
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
    }

    /// Reads one response and returns its body (the path that was asked for).
    async fn answer(c: &mut DuplexStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed before an answer");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length: ")
                            .or(l.strip_prefix("Content-Length: "))
                    })
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    return body[..len].to_string();
                }
            }
        }
    }

    async fn closed(c: &mut DuplexStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, c.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn every_request_on_a_keepalive_connection_has_its_own_header_deadline() {
        let (mut c, task, limits) = serve(false);
        for i in 0..20 {
            c.write_all(&get(&format!("/r{i}"))).await.unwrap();
            assert_eq!(answer(&mut c).await, format!("/r{i}"));
        }
        // Idle for longer than the header deadline, within the keep-alive timeout: fine.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A header split in two parts, in time.
        c.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(b"Host: t\r\n\r\n").await.unwrap();
        assert_eq!(answer(&mut c).await, "/slow");
        // The 22nd request never completes its header: closed at its deadline, counted.
        c.write_all(b"GET /never HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        assert!(closed(&mut c, Duration::from_millis(1500)).await);
        task.await.unwrap();
        assert_eq!(limits.header_timeouts.get(), 1);
        assert_eq!(limits.active.load(Ordering::Acquire), 0, "the slot is back");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_keepalive_timeout_and_is_not_counted() {
        let (mut c, task, limits) = serve(false);
        c.write_all(&get("/a")).await.unwrap();
        assert_eq!(answer(&mut c).await, "/a");
        assert!(closed(&mut c, Duration::from_millis(2000)).await);
        task.await.unwrap();
        assert_eq!(
            limits.header_timeouts.get(),
            0,
            "idling is no header timeout"
        );
    }

    #[tokio::test]
    async fn a_first_request_that_never_starts_is_closed_at_the_header_deadline() {
        let (mut c, task, limits) = serve(false);
        assert!(closed(&mut c, Duration::from_millis(1500)).await);
        task.await.unwrap();
        assert_eq!(limits.header_timeouts.get(), 1);
    }

    #[tokio::test]
    async fn pipelined_requests_keep_their_order_when_an_app_turns_pipelining_on() {
        let (mut c, task, _) = serve(true);
        c.write_all(&get("/1")).await.unwrap();
        assert_eq!(answer(&mut c).await, "/1");
        // Read ahead by Guarded, then found to follow a pipelining session: stashed.
        c.write_all(&get("/2")).await.unwrap();
        assert_eq!(answer(&mut c).await, "/2");
        // From now on Pingora waits for the next request inside the session.
        c.write_all(&get("/3")).await.unwrap();
        assert_eq!(answer(&mut c).await, "/3");
        drop(c);
        task.await.unwrap();
    }
}
