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
//!
//! The caps themselves are `conn/caps.rs`; the HTTP/1 keep-alive loop is `conn/h1.rs`; the
//! stream that reports header and preface progress to the deadlines is `conn/tracked.rs`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use http::{HeaderValue, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{ALPN, IO, Stream};
use pingora::server::ShutdownWatch;
use tokio::time::Instant;

mod caps;
mod h1;
mod tracked;

pub use caps::{Exempt, Limits};
use tracked::{State, Tracked};

/// RFC 9113 §3.4: every HTTP/2 connection starts with these 24 octets from the client.
const H2_PREFACE_LEN: usize = 24;

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
            // TLS over the listener's own TCP stream type, so that every read and write of the
            // connection reaches the socket without a pass-through layer (~150 instructions per
            // TLS request); another stream type (tests: an in-memory pipe) goes through one.
            Some(acceptor) if stream.as_any().is::<L4Stream>() => {
                let tcp = stream.into_any().downcast::<L4Stream>().ok()?;
                self.tls_handshake(acceptor, *tcp).await?
            }
            Some(acceptor) => self.tls_handshake(acceptor, Tracked::plain(stream)).await?,
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

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
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

    /// The TLS handshake over `stream`, bounded by the header deadline; `None` (logged) when it
    /// fails or takes longer. Boxed: the handshake's state (rustls' and Pingora's, kilobytes)
    /// is freed when it ends instead of staying in the connection's future for as long as the
    /// connection.
    fn tls_handshake<'a, S: IO + 'static>(
        &'a self,
        acceptor: &'a Acceptor,
        stream: S,
    ) -> Pin<Box<dyn Future<Output = Option<Stream>> + Send + 'a>> {
        Box::pin(async move {
            match tokio::time::timeout(self.limits.header_timeout, acceptor.tls_handshake(stream))
                .await
            {
                Ok(Ok(tls)) => Some(Box::new(tls) as Stream),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    self.timed_out("TLS handshake");
                    None
                }
            }
        })
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

/// The state of the connection under a session's stream, when `Guarded` serves it (HTTP/1).
fn state_of(stream: Option<&Stream>) -> Option<&State> {
    stream
        .and_then(|s| (**s).as_any().downcast_ref::<Tracked>())
        .and_then(|t| t.state.as_deref())
}

/// Marks the request header on this session's connection as complete (called by the
/// application as soon as Pingora has parsed it).
pub fn header_complete(stream: Option<&Stream>) {
    if let Some(state) = state_of(stream) {
        state.header_done.store(true, Ordering::Release);
    }
}

/// The client's address `ip` as a header value, made by `make` once per connection: the
/// connection keeps the value made for the first address it is asked for, which is the
/// address of every request on it unless a trusted proxy in front forwards several clients'
/// requests over it (those are made afresh). Formatting an address and copying it into a
/// header value was ~270 instructions per request (callgrind); a connection's requests
/// share one value.
pub fn address_value(
    stream: Option<&Stream>,
    ip: IpAddr,
    make: impl FnOnce(IpAddr) -> Option<HeaderValue>,
) -> Option<HeaderValue> {
    let Some(state) = state_of(stream) else {
        return make(ip);
    };
    if let Some((known, value)) = state.address_value.get() {
        return if *known == ip {
            Some(value.clone())
        } else {
            make(ip)
        };
    }
    let value = make(ip)?;
    let _ = state.address_value.set((ip, value.clone()));
    Some(value)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::conn::caps::test_limits as limits;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Answers every request with its path (`/slow-answer` after 500 ms, longer than the
    /// header deadline); `pipelining` turns Pingora's opt-in on.
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
            if body == b"/slow-answer" {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
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
        serve_with(limits(0, 300, 800), pipelining)
    }

    /// [`serve`] with other limits.
    fn serve_with(
        limits: Arc<Limits>,
        pipelining: bool,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>, Arc<Limits>) {
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

    #[test]
    fn an_address_value_is_made_once_per_connection_for_its_first_address() {
        let (_client, server) = tokio::io::duplex(64);
        let stream: Stream = Box::new(Tracked::new(Box::new(server), Arc::default()));
        let made = std::cell::Cell::new(0);
        let make = |ip: IpAddr| {
            made.set(made.get() + 1);
            HeaderValue::from_str(&ip.to_string()).ok()
        };
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let value = |ip| address_value(Some(&stream), ip, make).unwrap();
        assert_eq!(value(a), "192.0.2.1");
        assert_eq!(value(a), "192.0.2.1");
        assert_eq!(made.get(), 1, "made once");
        // Another client behind a trusted proxy on the same connection: made each time.
        assert_eq!(value(b), "192.0.2.2");
        assert_eq!(value(b), "192.0.2.2");
        assert_eq!(value(a), "192.0.2.1");
        assert_eq!(made.get(), 3);
        // A stream `Guarded` does not serve keeps nothing.
        let (_client, other) = tokio::io::duplex(64);
        let other: Stream = Box::new(other);
        assert!(address_value(Some(&other), a, make).is_some());
        assert!(address_value(None, a, make).is_some());
        assert_eq!(made.get(), 5);
    }

    /// The header deadline is the client's: an answer that takes longer than it, once the
    /// header is complete, still goes out, on the first request and on later ones.
    #[tokio::test]
    async fn a_slow_answer_outlives_the_header_deadline() {
        let (mut c, task, limits) = serve(false);
        for path in ["/slow-answer", "/a", "/slow-answer"] {
            c.write_all(&get(path)).await.unwrap();
            assert_eq!(answer(&mut c).await, path);
        }
        drop(c);
        task.await.unwrap();
        assert_eq!(limits.header_timeouts.get(), 0);
    }

    /// The idle timeout counts from the last answer: a connection used every 600 ms stays open
    /// with a keep-alive timeout of 800 ms, while the connection's one timer, set for earlier
    /// waits, fires in the middle of later ones.
    #[tokio::test]
    async fn each_wait_between_requests_gets_the_whole_keepalive_timeout() {
        let (mut c, task, limits) = serve(false);
        for i in 0..4 {
            c.write_all(&get(&format!("/r{i}"))).await.unwrap();
            assert_eq!(answer(&mut c).await, format!("/r{i}"));
            assert!(
                !closed(&mut c, Duration::from_millis(600)).await,
                "open after /r{i}"
            );
        }
        assert!(closed(&mut c, Duration::from_millis(1500)).await);
        task.await.unwrap();
        assert_eq!(limits.header_timeouts.get(), 0);
    }

    /// A keep-alive timeout shorter than the header deadline still closes an idle connection
    /// on time: the connection's one timer, set for the first header, is brought forward.
    #[tokio::test]
    async fn a_short_keepalive_timeout_is_kept_after_a_long_header_deadline() {
        let (mut c, task, limits) = serve_with(limits(0, 3000, 300), false);
        c.write_all(&get("/a")).await.unwrap();
        assert_eq!(answer(&mut c).await, "/a");
        assert!(closed(&mut c, Duration::from_millis(1500)).await);
        task.await.unwrap();
        assert_eq!(limits.header_timeouts.get(), 0);
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
