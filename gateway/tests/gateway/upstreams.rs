//! Upstream failure handling: all targets down → 503 then recovery; one of two targets killed
//! during a request loop → no failed GET.

use crate::helpers::{Echo, Gateway, Options, TestKey, list, raw_tls};

#[tokio::test]
async fn upstream_down_gives_503_then_recovers() {
    let key = TestKey::new(3);
    let jwks = Echo::start(key.jwks.clone()).await;
    let mut echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start(Options {
        targets: vec![echo.addr],
        jwks: jwks.addr,
    })
    .await;
    assert_eq!(gw.get("/open/x", None).await.status, 200);
    echo.stop();
    let mut saw_503 = false;
    for _ in 0..40 {
        let r = gw.get("/open/x", None).await;
        assert!(matches!(r.status, 502 | 503), "{}", r.text);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.body["type"], "upstream_unavailable");
        if r.status == 503 {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(saw_503, "health checks mark the target down");
    assert_eq!(gw.admin("/readyz").await.status, 503);
    echo.restart().await;
    let mut back = false;
    for _ in 0..50 {
        if gw.get("/open/x", None).await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "traffic resumes when the target returns");
}

/// A gateway whose upstream has two echo targets; the first echo serves the JWKS.
async fn two_targets(seed: u8) -> (Echo, Echo, Echo, Gateway) {
    let key = TestKey::new(seed);
    let jwks = Echo::start(key.jwks.clone()).await;
    let a = Echo::start(key.jwks.clone()).await;
    let b = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start(Options {
        targets: vec![a.addr, b.addr],
        jwks: jwks.addr,
    })
    .await;
    (jwks, a, b, gw)
}

#[tokio::test]
async fn one_of_two_targets_killed_during_a_loop_fails_no_get() {
    let (_jwks, mut a, _b, gw) = two_targets(4).await;
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..200 {
        if i == 50 {
            a.stop();
        }
        let r = gw.get("/open/loop", None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        ports.insert(r.body["port"].as_u64().unwrap_or_default());
    }
    assert_eq!(ports.len(), 2, "both targets served before one was killed");
}

/// `balance = "least_connections"`: while one target is busy with a slow request, new requests
/// go to the idle one (round robin would alternate).
#[tokio::test]
async fn least_connections_avoids_the_busy_target() {
    let key = TestKey::new(2);
    let jwks = Echo::start(key.jwks.clone()).await;
    let a = Echo::start(key.jwks.clone()).await;
    let b = Echo::start(key.jwks.clone()).await;
    let o = Options {
        targets: vec![a.addr, b.addr],
        jwks: jwks.addr,
    };
    let gw = std::sync::Arc::new(
        Gateway::start_with(o, |c| {
            c.set("upstreams.echo.balance", "least_connections");
        })
        .await,
    );
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("/open/slow?delay_ms=1500", None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut quick_ports = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = gw.get("/open/quick", None).await;
        assert_eq!(r.status, 200);
        quick_ports.insert(r.body["port"].as_u64().unwrap_or_default());
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    let slow_port = slow.body["port"].as_u64().unwrap_or_default();
    assert_eq!(
        quick_ports.len(),
        1,
        "all quick requests went to one target: {quick_ports:?}"
    );
    assert!(
        !quick_ports.contains(&slow_port),
        "the busy target got none of them"
    );
}

/// A route's own timeout: a slow upstream answer becomes 504 `upstream_timeout`.
#[tokio::test]
async fn route_timeout_gives_504() {
    let key = TestKey::new(13);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.route("/slowroute/", &[("timeout_ms", 300.into())]);
    })
    .await;
    let r = gw.get("/slowroute/x?delay_ms=1500", None).await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.body["type"], "upstream_timeout");
    assert_eq!(gw.get("/slowroute/x?delay_ms=10", None).await.status, 200);
}

/// `total_timeout_ms` bounds the whole attempt even when every single read is within
/// `read_timeout_ms`.
#[tokio::test]
async fn the_total_upstream_timeout_answers_504() {
    let key = TestKey::new(5);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("upstreams.echo.total_timeout_ms", 300);
    })
    .await;
    let r = gw.get("/open/slow?delay_ms=2000", None).await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.body["type"], "upstream_timeout");
    assert_eq!(gw.get("/open/fast", None).await.status, 200);
}

/// Targets may be host names (compose services, Kubernetes Services, platform private names);
/// they are resolved when the configuration is built and looked up again periodically.
#[tokio::test]
async fn a_host_name_target_is_resolved() {
    let key = TestKey::new(6);
    let echo = Echo::start(key.jwks.clone()).await;
    let port = echo.addr.port();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set(
            "upstreams.echo.targets",
            list(&[&format!("localhost:{port}")]),
        );
    })
    .await;
    assert!(
        std::fs::read_to_string(&gw.config)
            .unwrap()
            .contains(&format!("localhost:{port}"))
    );
    let r = gw.get("/open/by-name", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Round robin over two targets on reused upstream connections: every answer comes from the
/// target the gateway picked, so the ports alternate. A pooled connection handed out under the
/// wrong target (the check the vendored Pingora makes on reuse, vendor/README.md 5) would
/// answer twice in a row from one port.
#[tokio::test]
async fn pooled_upstream_connections_serve_only_their_own_target() {
    let (_jwks, a, b, gw) = two_targets(5).await;
    let mut ports = Vec::new();
    for i in 0..60 {
        let r = gw.get("/open/rr", None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        ports.push(r.body["port"].as_u64().unwrap_or_default());
    }
    let expected = [u64::from(a.addr.port()), u64::from(b.addr.port())];
    assert!(ports.iter().all(|p| expected.contains(p)), "{ports:?}");
    assert!(ports.windows(2).all(|w| w[0] != w[1]), "{ports:?}");
}

/// A keep-alive HTTP/1.1 upstream written out by hand, so a test decides when it closes a
/// connection; `GET /open/never` is never answered; `GET /open/announced-close` is answered with
/// `Connection: close` and `GET /open/http10` as HTTP/1.0 without keep-alive, the connection
/// left open all the same. `open` counts the connections that carried a proxied request (health checks
/// excluded) and are still open, `opened` all such connections ever.
struct RawUpstream {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The head of every proxied request, as received.
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// `close_after_answer`: the upstream closes a connection 50 ms after answering a proxied
    /// request on it, without announcing it (no `Connection: close`), as servers with a short
    /// keep-alive timeout do.
    async fn start(close_after_answer: bool) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, o2, h) = (open.clone(), opened.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let (open, opened, heads) = (o.clone(), o2.clone(), h.clone());
                conns.spawn(async move {
                    let (mut buf, mut chunk, mut proxied) = (Vec::new(), [0u8; 4096], false);
                    'conn: loop {
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let health = head.starts_with(b"GET /healthz ");
                            if !health && !proxied {
                                proxied = true;
                                open.fetch_add(1, SeqCst);
                                opened.fetch_add(1, SeqCst);
                            }
                            if !health {
                                let head = String::from_utf8_lossy(&head).into_owned();
                                heads.lock().unwrap_or_else(|p| p.into_inner()).push(head);
                            }
                            if head.starts_with(b"GET /open/never ") {
                                continue; // never answered: the test waits for the close
                            }
                            if head.starts_with(b"GET /open/big") {
                                if write_big(&mut s, head.windows(8).any(|w| w == b"chunked/")).await.is_err() {
                                    break 'conn;
                                }
                                continue;
                            }
                            let answer: &[u8] = if head.starts_with(b"GET /open/announced-close ") {
                                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                            } else if head.starts_with(b"GET /open/http10 ") {
                                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-Odd-CASE: Keep-This\r\nX-Powered-By: PHP/8.3\r\ncontent-length: 2\r\n\r\nok"
                            };
                            if s.write_all(answer).await.is_err() {
                                break 'conn;
                            }
                            if close_after_answer && !health {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                break 'conn;
                            }
                        }
                    }
                    if proxied {
                        open.fetch_sub(1, SeqCst);
                    }
                });
            }
        });
        Self {
            addr,
            open,
            opened,
            heads,
            task,
        }
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn opened(&self) -> usize {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `open()` comes to `want` within 10 s (polled every 50 ms).
    async fn open_becomes(&self, want: usize) -> bool {
        for _ in 0..200 {
            if self.open() == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// The heads of the proxied requests so far, as received.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The body `GET /open/big` answers: 1 MiB of a pattern that shows a lost or repeated piece.
fn big_body() -> Vec<u8> {
    (0..1usize << 20).map(|i| (i % 251) as u8).collect()
}

/// Answers `GET /open/big` in pieces, yielding between them so that the response arrives over
/// many reads: with a content length, or chunked when the request target has `?chunked/`.
async fn write_big(s: &mut tokio::net::TcpStream, chunked: bool) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let body = big_body();
    if chunked {
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
    } else {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).await?;
    }
    for piece in body.chunks(48 * 1024 + 7) {
        if chunked {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            s.write_all(piece).await?;
            s.write_all(b"\r\n").await?;
        } else {
            s.write_all(piece).await?;
        }
        s.flush().await?;
        tokio::task::yield_now().await;
    }
    if chunked {
        s.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// A response that arrives over many reads, with a length or chunked, reaches HTTP/1.1 and
/// HTTP/2 clients whole, and the connections go on serving.
#[tokio::test]
async fn a_large_response_arriving_in_pieces_is_passed_on_whole() {
    let (_jwks, _up, gw) = behind_raw_upstream(10, false, |_| {}).await;
    let want = big_body();
    for h2 in [false, true] {
        let client = gw.https_client(h2);
        for path in ["/open/big", "/open/big?chunked/"] {
            for round in 0..2 {
                let r = client.get(gw.url(path)).send().await.unwrap();
                assert_eq!(r.status(), 200, "{path} h2={h2} round {round}");
                let got = r.bytes().await.unwrap();
                assert!(
                    got[..] == want[..],
                    "{path} h2={h2} round {round}: {} bytes",
                    got.len()
                );
            }
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway whose only target is a `RawUpstream` (`close_after_answer` as there), with the
/// settings changed by `tweak`; the echo serves the JWKS.
async fn behind_raw_upstream(
    seed: u8,
    close_after_answer: bool,
    tweak: impl FnOnce(&mut crate::helpers::TestConfig),
) -> (Echo, RawUpstream, Gateway) {
    let key = TestKey::new(seed);
    let jwks = Echo::start(key.jwks.clone()).await;
    let up = RawUpstream::start(close_after_answer).await;
    let o = Options {
        targets: vec![up.addr],
        jwks: jwks.addr,
    };
    let gw = Gateway::start_with(o, tweak).await;
    (jwks, up, gw)
}

/// A client that goes away while the upstream has not answered yet ends the request: the
/// gateway closes the upstream connection then, rather than holding it until the upstream's
/// 60 s read timeout.
#[tokio::test]
async fn a_client_that_goes_away_frees_the_upstream_connection() {
    use tokio::io::AsyncWriteExt;
    let (_jwks, up, gw) = behind_raw_upstream(12, false, |c| {
        c.set("upstreams.echo.read_timeout_ms", 60_000);
    })
    .await;
    let mut tls = crate::helpers::tls_connect(&gw).await.unwrap();
    tls.write_all(b"GET /open/never HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(
        up.open_becomes(1).await,
        "the request did not reach the upstream"
    );
    drop(tls);
    assert!(
        up.open_becomes(0).await,
        "the upstream connection stayed open after the client left\n{}",
        gw.log()
    );
}

/// An upstream that closes its idle keep-alive connections soon after answering: the gateway
/// never sends a request on a pooled connection the upstream has closed; every request is
/// answered, and none fails first and is retried (the log stays free of failed attempts).
#[tokio::test]
async fn an_upstream_closing_idle_connections_fails_no_request() {
    let (_jwks, _up, gw) = behind_raw_upstream(7, true, |_| {}).await;
    for i in 0..6 {
        let r = gw.get("/open/closing", None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        assert_eq!(r.text, "ok");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // Pingora would retry a request sent on a connection the upstream had closed, so every
    // answer above would still be 200: what tells a stale connection apart is the warning each
    // failed attempt leaves in the operator's log.
    let log = gw.log();
    assert!(
        !log.contains("Fail to proxy"),
        "a request went to a closed connection:\n{log}"
    );
}

/// Idle upstream connections are kept for reuse, and closed by the gateway once they have been
/// idle for the upstream's `idle_timeout_ms` (the upstream sees them go).
#[tokio::test]
async fn idle_upstream_connections_are_reused_then_closed_after_the_idle_timeout() {
    let (_jwks, up, gw) = behind_raw_upstream(8, false, |c| {
        c.set("upstreams.echo.idle_timeout_ms", 400);
    })
    .await;
    for _ in 0..5 {
        assert_eq!(gw.get("/open/reused", None).await.status, 200);
    }
    assert!(
        up.open() >= 1,
        "the gateway keeps its upstream connections open for reuse"
    );
    assert!(
        up.open_becomes(0).await,
        "the idle connection was closed by the gateway"
    );
    assert_eq!(gw.get("/open/after", None).await.status, 200);
}

/// Header names do not keep the case they came in (vendored Pingora patch 8, one header map per
/// message instead of two): HTTP/1 peers see standard names as Pingora titles them and others
/// in lower case, in both directions; values are untouched. (`X-Powered-By` is removed.)
#[tokio::test]
async fn header_names_are_passed_on_in_one_case() {
    let (_jwks, up, gw) = behind_raw_upstream(9, false, |_| {}).await;
    let request = b"GET /open/case HTTP/1.1\r\nHost: localhost\r\nX-Client-THING: As-Sent\r\nConnection: close\r\n\r\n";
    let answer = raw_tls(&gw, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nx-odd-case: Keep-This\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: text/plain\r\n"),
        "{answer}"
    );
    assert!(
        !answer.to_ascii_lowercase().contains("x-powered-by"),
        "versions are not revealed: {answer}"
    );
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].contains("\r\nx-client-thing: As-Sent\r\n"),
        "{}",
        heads[0]
    );
}

/// Hop-by-hop fields and the ones the client's `Connection` names stay between the client and
/// the gateway; the others reach the upstream. A request without any of them passes whole.
#[tokio::test]
async fn hop_by_hop_fields_do_not_reach_the_upstream() {
    let (_jwks, up, gw) = behind_raw_upstream(11, false, |_| {}).await;
    let request = b"GET /open/hop HTTP/1.1\r\nHost: localhost\r\nConnection: X-Drop-Me, close\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nProxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nX-Keep: 2\r\n\r\n";
    let answer = raw_tls(&gw, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain =
        b"GET /open/plain HTTP/1.1\r\nHost: localhost\r\nX-Keep: 3\r\nConnection: close\r\n\r\n";
    assert!(raw_tls(&gw, plain).await.starts_with("HTTP/1.1 200"));
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let hop = heads[0].to_ascii_lowercase();
    for gone in [
        "\r\nx-drop-me:",
        "\r\nkeep-alive:",
        "\r\nte:",
        "\r\ntrailer:",
        "\r\nproxy-authorization:",
        "\r\nproxy-connection:",
        "close",
    ] {
        assert!(!hop.contains(gone), "{gone} reached the upstream: {hop}");
    }
    assert!(hop.contains("\r\nx-keep: 2\r\n"), "{hop}");
    assert!(
        heads[1].to_ascii_lowercase().contains("\r\nx-keep: 3\r\n"),
        "{}",
        heads[1]
    );
}

/// An upstream that says its connection ends with the answer (`Connection: close`, or HTTP/1.0
/// without keep-alive) has that connection closed by the gateway and never reused, even when
/// the upstream itself would keep it open; an ordinary answer's connection stays for the next
/// request. (Vendored Pingora patch 14: the upstream session hands the response header over
/// to the proxy and keeps only what keep-alive and framing need.)
#[tokio::test]
async fn an_upstream_announcing_the_end_of_its_connection_is_not_reused() {
    let (_jwks, up, gw) = behind_raw_upstream(15, false, |_| {}).await;
    for path in [
        "/open/announced-close",
        "/open/http10",
        "/open/announced-close",
    ] {
        let r = gw.get(path, None).await;
        assert_eq!((r.status, r.text.as_str()), (200, "ok"), "{path}");
        assert!(
            up.open_becomes(0).await,
            "{path}: the gateway kept a connection the upstream announced it would close"
        );
    }
    assert_eq!(
        up.opened(),
        3,
        "each of those answers had a connection of its own"
    );
    for _ in 0..3 {
        assert_eq!(gw.get("/open/kept", None).await.status, 200);
    }
    assert_eq!(
        (up.opened(), up.open()),
        (4, 1),
        "the three kept-alive answers came over one connection, still open"
    );
    assert_eq!(up.heads().len(), 6);
}
