//! The HTTP/1.x keep-alive loop of [`Guarded`]: one `process_new_http` per request, the wait
//! for the next request's first bytes outside any session, each request's header deadline and
//! the keep-alive timeout between requests.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::Guarded;
use super::tracked::{State, Tracked};

/// What the first read of a request reads into: Pingora's own initial header buffer size
/// (`INIT_HEADER_BUF_SIZE` in pingora-core, not exported).
const HEADER_BUF: usize = 4096;

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
    pub(super) async fn serve_h1(&self, stream: Stream, first: Instant, shutdown: &ShutdownWatch) {
        let state = Arc::new(State::default());
        let mut stream: Stream = Box::new(Tracked::new(stream, state.clone()));
        let mut shutdown_rx = shutdown.clone();
        // One shutdown wait and one timer for the whole connection instead of both set up and
        // torn down for every request (callgrind, `bench/icount.sh`: −0.5 % instructions per
        // plain request). The timer is not moved for each wait between requests either: each
        // wait notes its own deadline, and when the timer fires early (it was set for an earlier
        // wait) it is moved to that deadline then: once per keep-alive period at most, not once
        // per request.
        let shutdown_wait = shutting_down(&mut shutdown_rx);
        tokio::pin!(shutdown_wait);
        let idle_timer = tokio::time::sleep_until(first);
        tokio::pin!(idle_timer);
        let mut wait_deadline = first;
        let mut next = Next::First;
        // Set once an application turned pipelining on for this connection (see below).
        let mut pipelining = false;
        loop {
            // The next request's first bytes. Waiting needs no session and no header buffer,
            // so an idle connection holds only its stream.
            let started = if pipelining {
                None
            } else {
                let idle = match next {
                    Next::First => false,
                    Next::Reused(_) => {
                        wait_deadline = Instant::now() + self.limits.keepalive;
                        // Still set for the first request's header deadline, later than this
                        // wait's end (a header timeout longer than the keep-alive timeout):
                        // brought forward, once per connection at most.
                        if idle_timer.deadline() > wait_deadline {
                            idle_timer.as_mut().reset(wait_deadline);
                        }
                        true
                    }
                };
                loop {
                    tokio::select! {
                        biased;
                        bytes = first_bytes(&mut stream) => match bytes {
                            Some(bytes) => break Some(bytes),
                            // Closed between requests: the normal end of a keep-alive
                            // connection.
                            None => return,
                        },
                        () = &mut idle_timer => {
                            if idle_timer.deadline() < wait_deadline {
                                // Set for an earlier wait: this one is not over yet.
                                idle_timer.as_mut().reset(wait_deadline);
                                continue;
                            }
                            if !idle {
                                self.timed_out("request header");
                            }
                            // Idle longer than the keep-alive timeout: closed, as RFC 9112 §9.6
                            // allows at any time between requests.
                            return;
                        }
                        () = &mut shutdown_wait => return,
                    }
                }
            };
            // A later request's header is due `header_timeout` after its first bytes; the
            // clock is read for it only when the first poll below leaves the header incomplete
            // (rare: it usually comes whole), so that deadline counts from the end of that poll.
            let first_request_deadline = match next {
                Next::First => Some(first),
                Next::Reused(_) => None,
            };

            let mut session = ServerSession::new_http1(stream);
            // Header names are not kept in the case they came in: one header map per message
            // instead of two (vendored Pingora patch 8; −6 % CPU per plain request). Names go
            // out as Pingora titles them (`Content-Type`) or in lower case (RFC 9110 §5.1:
            // case-insensitive), as Caddy and Envoy write them too.
            session.set_keep_header_case(false);
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
            // then no deadline timer is needed at all. Each poll of the request is one poll of
            // the whole proxy (its upstream and downstream reads among them): the request is
            // polled once per wake-up, never twice in a row (awaiting it again right after a
            // first poll that found it pending cost a second round of reads; callgrind: 1 050
            // instructions per plain request, 1 420 over TLS).
            let mut header_deadline = std::pin::pin!(None::<tokio::time::Sleep>);
            let reused = std::future::poll_fn(|cx| {
                if let Poll::Ready(reused) = request.as_mut().poll(cx) {
                    return Poll::Ready(Some(reused));
                }
                if state.header_done.load(Ordering::Acquire) {
                    // A slow answer is not the client's doing: once the header is complete,
                    // its deadline no longer counts.
                    return Poll::Pending;
                }
                if header_deadline.is_none() {
                    let at = first_request_deadline
                        .unwrap_or_else(|| Instant::now() + self.limits.header_timeout);
                    header_deadline.set(Some(tokio::time::sleep_until(at)));
                }
                match header_deadline.as_mut().as_pin_mut().map(|d| d.poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(None),
                    _ => Poll::Pending,
                }
            })
            .await;
            let Some(reused) = reused else {
                self.timed_out("request header");
                return;
            };
            let Some(reused) = reused else { return };
            let (s, settings) = reused.consume();
            stream = s;
            next = Next::Reused(settings);
        }
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
