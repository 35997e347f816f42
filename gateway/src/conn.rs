//! Client connections: the TLS handshake of the HTTPS listener, and limits Pingora does not
//! have — a cap on concurrent connections and a total deadline for a request header
//! (slowloris). Pingora times out each read (60 s), so a client
//! that sends one byte a minute would hold a connection forever.
//!
//! [`Guarded`] wraps the proxy application. Every HTTP/1 connection is counted while it lives
//! and its stream is wrapped in [`Tracked`], which notes when the first byte of a request
//! arrives; the proxy marks the header as complete in `early_request_filter`
//! ([`header_complete`]). A request whose header is not complete `header_timeout` after its
//! first byte (for the first request on a connection: after the TLS handshake) is dropped
//! without an answer, like nginx's `client_header_timeout`. Idle keep-alive connections are
//! Pingora's keep-alive timeout's business. HTTP/2 connections are counted but not tracked:
//! their framing has its own limits.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

/// The connection count and limits one listener shares between its filter and its app.
pub struct Limits {
    active: AtomicUsize,
    max: usize,
    header_timeout: Duration,
    listener: &'static str,
    gauge: IntGauge,
    refused_at_cap: IntCounter,
    header_timeouts: IntCounter,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("listener", &self.listener)
            .field("max", &self.max)
            .field("header_timeout", &self.header_timeout)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(
        listener: &'static str,
        max: usize,
        header_timeout: Duration,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let rejected = |reason| {
            metrics
                .connections_rejected
                .with_label_values(&[listener, reason])
        };
        Arc::new(Self {
            active: AtomicUsize::new(0),
            max,
            header_timeout,
            listener,
            gauge: metrics.connections_active.with_label_values(&[listener]),
            refused_at_cap: rejected("max_connections"),
            header_timeouts: rejected("header_timeout"),
        })
    }

    /// A slot for one more connection, or `None` at the cap.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let n = self.active.fetch_add(1, Ordering::AcqRel);
        if n >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauge.inc();
        Some(Slot(self.clone()))
    }
}

/// Held while a connection lives.
struct Slot(Arc<Limits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// Refuses new TCP connections at the cap before any TLS work is done.
#[async_trait]
impl ConnectionFilter for Limits {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        let ok = self.active.load(Ordering::Acquire) < self.max;
        if !ok {
            self.refused_at_cap.inc();
        }
        ok
    }
}

/// The proxy application with connection limits — and, on the HTTPS listener, the TLS
/// handshake — in front. The handshake happens here rather than in Pingora's listener because
/// Pingora's TLS settings cannot offer `acme-tls/1` next to h2 and http/1.1 (RFC 8737), and so
/// that the header deadline also bounds a handshake that never finishes.
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
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.limits.admit() else {
            // Between the filter's check and here the cap was reached.
            self.limits.refused_at_cap.inc();
            return None;
        };
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
                        self.limits.header_timeouts.inc();
                        return None;
                    }
                }
            }
        };
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => return self.inner.process_new(stream, shutdown).await,
            Some(ALPN::H1) | None => {}
            // acme-tls/1: the validation handshake was the whole exchange (RFC 8737 §3).
            Some(_) => return None,
        }
        let state = Arc::new(State::new());
        let mut stream: Stream = Box::new(Tracked {
            inner: stream,
            state: Some(state.clone()),
        });
        let mut first = true;
        // Pingora hands a reusable keep-alive connection back; serving it here keeps the slot
        // held for the connection's whole life.
        loop {
            state.begin_request(first);
            first = false;
            let request = self.inner.process_new(stream, shutdown);
            tokio::pin!(request);
            let reused = loop {
                let wait = match state.remaining(self.limits.header_timeout) {
                    Remaining::HeaderDone => break request.await,
                    Remaining::Idle => self.limits.header_timeout,
                    Remaining::Left(left) if left.is_zero() => {
                        self.limits.header_timeouts.inc();
                        tracing::info!(
                            listener = self.limits.listener,
                            timeout_ms = self.limits.header_timeout.as_millis() as u64,
                            "request header not complete in time; connection closed"
                        );
                        break None;
                    }
                    Remaining::Left(left) => left,
                };
                tokio::select! {
                    biased;
                    reused = &mut request => break reused,
                    () = tokio::time::sleep(wait) => {}
                }
            };
            match reused {
                Some(s) => stream = s,
                None => return None,
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Marks the request header on this session's connection as complete (called by the proxy as
/// soon as Pingora has parsed it).
pub fn header_complete(stream: Option<&Stream>) {
    if let Some(state) = stream
        .and_then(|s| (**s).as_any().downcast_ref::<Tracked>())
        .and_then(|t| t.state.as_ref())
    {
        state.header_done.store(true, Ordering::Release);
    }
}

/// Per-connection progress of the current request header.
#[derive(Debug)]
struct State {
    origin: Instant,
    /// Milliseconds after `origin` + 1 at which the current request's first byte arrived;
    /// 0 while the connection is idle between requests.
    first_byte: AtomicU64,
    header_done: AtomicBool,
}

enum Remaining {
    HeaderDone,
    Idle,
    Left(Duration),
}

impl State {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            first_byte: AtomicU64::new(0),
            header_done: AtomicBool::new(false),
        }
    }

    fn now_mark(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// The first request's clock starts at once (the client connected to send it); later
    /// ones start with their first byte.
    fn begin_request(&self, first: bool) {
        self.header_done.store(false, Ordering::Release);
        let mark = if first { self.now_mark() } else { 0 };
        self.first_byte.store(mark, Ordering::Release);
    }

    fn awaiting_first_byte(&self) -> bool {
        self.first_byte.load(Ordering::Relaxed) == 0 && !self.header_done.load(Ordering::Relaxed)
    }

    fn remaining(&self, timeout: Duration) -> Remaining {
        if self.header_done.load(Ordering::Acquire) {
            return Remaining::HeaderDone;
        }
        match self.first_byte.load(Ordering::Acquire) {
            0 => Remaining::Idle,
            mark => {
                let elapsed = Duration::from_millis(self.now_mark().saturating_sub(mark));
                Remaining::Left(timeout.saturating_sub(elapsed))
            }
        }
    }
}

/// A client stream that notes when a request's first byte arrives (or, without state, just
/// passes through: the TCP stream under a TLS handshake).
pub struct Tracked {
    inner: Stream,
    state: Option<Arc<State>>,
}

impl Tracked {
    fn plain(inner: Stream) -> Self {
        Self { inner, state: None }
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if let Some(state) = &self.state
            && buf.filled().len() > before
            && state.awaiting_first_byte()
        {
            state.first_byte.store(state.now_mark(), Ordering::Release);
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
    use super::*;

    #[test]
    fn first_request_clock_starts_at_once_later_ones_with_their_first_byte() {
        let s = State::new();
        s.begin_request(true);
        assert!(
            matches!(s.remaining(Duration::from_secs(10)), Remaining::Left(d) if d > Duration::from_secs(9))
        );
        s.header_done.store(true, Ordering::Release);
        assert!(matches!(
            s.remaining(Duration::from_secs(10)),
            Remaining::HeaderDone
        ));
        s.begin_request(false);
        assert!(matches!(
            s.remaining(Duration::from_secs(10)),
            Remaining::Idle
        ));
        assert!(s.awaiting_first_byte());
        s.first_byte.store(s.now_mark(), Ordering::Release);
        assert!(!s.awaiting_first_byte());
        assert!(matches!(
            s.remaining(Duration::ZERO),
            Remaining::Left(d) if d.is_zero()
        ));
    }
}
