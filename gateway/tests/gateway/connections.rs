//! Connection-level limits and modes: the slowloris header deadline, the connection cap, the
//! plain-HTTP proxy mode for platforms that terminate TLS, passive ejection of a target that
//! answers with server errors, and the read-only metrics listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::helpers::{Echo, Gateway, Options, TestConfig, TestKey, list, rustls_client};

/// The deadlines every slow-client test runs with (configured in seconds).
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE: Duration = Duration::from_secs(2);
/// Slack on a deadline: timers, a busy test machine.
const SLACK: Duration = Duration::from_secs(2);

/// Short deadlines and a read-only metrics listener.
fn slow_client_settings(c: &mut TestConfig, metrics_port: u16) {
    c.set(
        "server.keepalive_timeout_seconds",
        KEEPALIVE.as_secs() as i64,
    )
    .set(
        "server.header_timeout_seconds",
        HEADER_TIMEOUT.as_secs() as i64,
    )
    .set("listen.metrics", format!("127.0.0.1:{metrics_port}"));
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// How a test reaches one listener, and a request it answers with `status`.
#[derive(Clone)]
struct Listener {
    name: &'static str,
    port: u16,
    /// The development CA for TLS, with the ALPN protocol to offer.
    tls: Option<(PathBuf, &'static [u8])>,
    request: String,
    status: u16,
}

impl Listener {
    fn https(gw: &Gateway, alpn: &'static [u8]) -> Self {
        Self {
            name: "https",
            port: gw.https,
            tls: Some((gw.dir.join("certs/ca.pem"), alpn)),
            request: "GET /open/slow-clients HTTP/1.1\r\nHost: localhost\r\n\r\n".into(),
            status: 200,
        }
    }

    fn plain(name: &'static str, port: u16, path: &str, status: u16) -> Self {
        Self {
            name,
            port,
            tls: None,
            request: format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
            status,
        }
    }

    async fn connect_from(&self, source: [u8; 4]) -> std::io::Result<Box<dyn Conn>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let tcp = socket.connect(([127, 0, 0, 1], self.port).into()).await?;
        let Some((ca, alpn)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let mut config = (*rustls_client(&std::fs::read(ca).unwrap())).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Ok(Box::new(connector.connect(name, tcp).await?))
    }

    async fn connect(&self) -> Box<dyn Conn> {
        self.connect_from([127, 0, 0, 1]).await.unwrap()
    }

    /// Sends the listener's request and reads the answer (status and a Content-Length body).
    async fn ask(&self, c: &mut Box<dyn Conn>) {
        c.write_all(self.request.as_bytes()).await.unwrap();
        let status = read_response(c).await;
        assert_eq!(status, self.status, "{}", self.name);
    }
}

/// Reads one HTTP/1.1 response and returns its status.
async fn read_response(c: &mut Box<dyn Conn>) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + len {
            assert_eq!(got.len(), end + 4 + len, "one answer at a time");
            return head[9..12].parse().unwrap();
        }
    }
}

/// Reads until the peer closes (Ok(bytes)) or `limit` passes (Err).
async fn read_to_close(
    s: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|_| "still open")?;
    Ok(out)
}

/// Sends `start` at once, then one more byte of an endless header line every 200 ms, and
/// returns how long after `start` the gateway closed the connection without an answer.
async fn trickle_until_closed(c: Box<dyn Conn>, start: &[u8], limit: Duration) -> Duration {
    let (mut r, mut w) = tokio::io::split(c);
    let begun = Instant::now();
    w.write_all(start).await.unwrap();
    let trickle = async {
        for b in b"X-Padding: ".iter().chain(std::iter::repeat(&b'a')) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = trickle => unreachable!(),
        got = read_to_close(&mut r, limit) => {
            assert_eq!(got, Ok(Vec::new()), "closed without an answer");
        }
    }
    begun.elapsed()
}

/// The HTTP/1 slow-client matrix on one listener: each misbehaving connection is closed
/// within its deadline, the well-behaved ones are served. Returns how many connections the
/// header deadline closed (for the metric).
async fn slow_http1_clients(l: &Listener) -> f64 {
    let deadline = HEADER_TIMEOUT + SLACK;
    let partial = b"GET /open/never HTTP/1.1\r\nHost: localhost\r\n";
    let silent = async {
        let mut c = l.connect().await;
        let begun = Instant::now();
        assert_eq!(
            read_to_close(&mut c, deadline).await,
            Ok(Vec::new()),
            "{}: silent",
            l.name
        );
        begun.elapsed()
    };
    let stalled = async {
        let mut c = l.connect().await;
        c.write_all(partial).await.unwrap();
        let begun = Instant::now();
        assert_eq!(
            read_to_close(&mut c, deadline).await,
            Ok(Vec::new()),
            "{}: stalled",
            l.name
        );
        begun.elapsed()
    };
    // The n-th request of a keep-alive connection trickles its header.
    let trickled = |n: usize| async move {
        let mut c = l.connect().await;
        for _ in 1..n {
            l.ask(&mut c).await;
        }
        trickle_until_closed(c, b"GET /open/trickle HTTP/1.1\r\n", deadline).await
    };
    // In time: a header in parts, idling longer than the header deadline (but less than the
    // keep-alive timeout) between requests, twenty requests in a row; then idle until closed.
    let well_behaved = async {
        let mut c = l.connect().await;
        for part in l.request.as_bytes().chunks(l.request.len().div_ceil(3)) {
            c.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let status = read_response(&mut c).await;
        assert_eq!(status, l.status, "{}: a header in parts", l.name);
        tokio::time::sleep(HEADER_TIMEOUT + Duration::from_millis(300)).await;
        for _ in 0..20 {
            l.ask(&mut c).await;
        }
        let begun = Instant::now();
        assert_eq!(
            read_to_close(&mut c, KEEPALIVE + SLACK).await,
            Ok(Vec::new()),
            "{}: idle keep-alive",
            l.name
        );
        begun.elapsed()
    };
    let (silent, stalled, second, tenth, idle) =
        tokio::join!(silent, stalled, trickled(2), trickled(10), well_behaved);
    for (what, took, limit) in [
        ("silent", silent, deadline),
        ("stalled", stalled, deadline),
        ("2nd request trickled", second, deadline),
        ("10th request trickled", tenth, deadline),
        ("idle keep-alive", idle, KEEPALIVE + SLACK),
    ] {
        assert!(took <= limit, "{}: {what}: closed after {took:?}", l.name);
    }
    4.0
}

async fn header_timeouts(gw: &Gateway, listener: &str) -> f64 {
    gw.metric(&format!(
        "gatehouse_gateway_connections_rejected_total{{listener=\"{listener}\",reason=\"header_timeout\"}}"
    ))
    .await
}

#[tokio::test]
async fn slow_and_idle_http1_clients_on_https_plain_redirect_admin_and_metrics() {
    let key = TestKey::new(21);
    let echo = Echo::start(key.jwks.clone()).await;
    let metrics_port = crate::helpers::free_port();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        slow_client_settings(c, metrics_port)
    })
    .await;
    let listeners = [
        Listener::https(&gw, b"http/1.1"),
        Listener::plain("http", gw.http, "/anything", 308),
        Listener::plain("admin", gw.admin, "/healthz", 200),
        Listener::plain("metrics", metrics_port, "/healthz", 200),
    ];
    let closed = futures_util::future::join_all(listeners.iter().map(slow_http1_clients)).await;
    for (l, closed) in listeners.iter().zip(closed) {
        assert_eq!(header_timeouts(&gw, l.name).await, closed, "{}", l.name);
    }
    for path in ["/open/never", "/open/trickle"] {
        assert_eq!(echo.count(path), 0, "{path}: nothing was forwarded");
    }
}

#[tokio::test]
async fn slow_and_idle_http1_clients_on_plain_http_in_proxy_mode() {
    let key = TestKey::new(27);
    let echo = Echo::start(key.jwks.clone()).await;
    let metrics_port = crate::helpers::free_port();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        slow_client_settings(c, metrics_port);
        c.set("listen.http_mode", "proxy");
    })
    .await;
    let http = Listener::plain("http", gw.http, "/open/slow-clients", 200);
    let closed = slow_http1_clients(&http).await;
    assert_eq!(header_timeouts(&gw, "http").await, closed);
    for path in ["/open/never", "/open/trickle"] {
        assert_eq!(echo.count(path), 0, "{path}: nothing was forwarded");
    }
}

/// RFC 9113 §3.4 and §6.5: the client connection preface is this, then a SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// An HTTP/2 GET of /open/h2 on stream 1 (RFC 7541 §6.1/§6.2.2: indexed `:method GET`,
/// `:scheme https`, literal `:path`/`:authority` with indexed names).
fn h2_get() -> Vec<u8> {
    let mut block = vec![0x82, 0x87];
    for (index, value) in [(4u8, "/open/h2"), (1, "localhost")] {
        block.push(index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    let len = block.len();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    let mut frame = vec![0, 0, u8::try_from(len).unwrap(), 1, 0x5, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    frame
}

/// Reads frames until a HEADERS frame on stream 1 (the answer to `h2_get`).
async fn h2_answer(c: &mut Box<dyn Conn>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut at = 0;
        while got.len() >= at + 9 {
            let len = usize::from(got[at]) << 16
                | usize::from(got[at + 1]) << 8
                | usize::from(got[at + 2]);
            let (kind, stream) = (got[at + 3], &got[at + 5..at + 9]);
            if kind == 1 && stream == [0, 0, 0, 1] {
                return;
            }
            at += 9 + len;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("an HTTP/2 answer in time")
            .unwrap();
        assert!(n > 0, "closed before an HTTP/2 answer");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn slow_and_idle_http2_clients() {
    let key = TestKey::new(28);
    let echo = Echo::start(key.jwks.clone()).await;
    let metrics_port = crate::helpers::free_port();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        slow_client_settings(c, metrics_port)
    })
    .await;
    let h2 = Listener::https(&gw, b"h2");
    let deadline = HEADER_TIMEOUT + SLACK;
    let closes_within = |start: &'static [u8], limit: Duration| {
        let h2 = h2.clone();
        async move {
            let mut c = h2.connect().await;
            c.write_all(start).await.unwrap();
            let begun = Instant::now();
            // The gateway sends its SETTINGS at once (RFC 9113 §3.4), and nothing else.
            assert!(read_to_close(&mut c, limit).await.is_ok(), "closed");
            begun.elapsed()
        }
    };
    // No preface at all, half of it.
    let silent = closes_within(b"", deadline);
    let partial = closes_within(&H2_PREFACE[..12], deadline);
    // In time: the preface in two parts, then a request; served. Then idle (no open stream):
    // still open after the header deadline, closed after the keep-alive timeout.
    let well_behaved = async {
        let mut c = h2.connect().await;
        c.write_all(&H2_PREFACE[..12]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(&H2_PREFACE[12..]).await.unwrap();
        c.write_all(H2_EMPTY_SETTINGS).await.unwrap();
        c.write_all(&h2_get()).await.unwrap();
        h2_answer(&mut c).await;
        let begun = Instant::now();
        let got = read_to_close(&mut c, KEEPALIVE + SLACK).await;
        assert!(got.is_ok(), "an idle HTTP/2 connection is closed");
        begun.elapsed()
    };
    let (silent, partial, idle) = tokio::join!(silent, partial, well_behaved);
    assert!(silent <= deadline, "no preface: closed after {silent:?}");
    assert!(
        partial <= deadline,
        "half a preface: closed after {partial:?}"
    );
    assert!(
        idle > HEADER_TIMEOUT && idle <= KEEPALIVE + SLACK,
        "idle: closed after {idle:?}"
    );
    assert_eq!(header_timeouts(&gw, "https").await, 2.0);

    // Multiplexing: concurrent requests on one HTTP/2 connection.
    let client = gw.https_client(true);
    let answers = futures_util::future::join_all((0..10).map(|i| {
        client
            .get(gw.url(&format!("/open/mux{i}?delay_ms=200")))
            .send()
    }))
    .await;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
    }
}

/// True when the gateway refused the connection: no TLS session, or closed unanswered.
async fn refused(l: &Listener, source: [u8; 4]) -> bool {
    let Ok(mut c) = l.connect_from(source).await else {
        return true;
    };
    let _ = c.write_all(l.request.as_bytes()).await;
    read_to_close(&mut c, Duration::from_secs(5)).await == Ok(Vec::new())
}

/// True when a connection from `source` is answered, within five seconds of retries.
async fn served(l: &Listener, source: [u8; 4]) -> bool {
    for _ in 0..50 {
        if let Ok(mut c) = l.connect_from(source).await
            && c.write_all(l.request.as_bytes()).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), c.read(&mut [0u8; 16]))
                .await
                .is_ok_and(|r| r.is_ok_and(|n| n > 0))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn connections_beyond_the_caps_are_refused_and_slots_come_back() {
    let key = TestKey::new(22);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("server.max_connections", 3)
            .set("server.max_connections_per_client", 2);
    })
    .await;
    let https = Listener::https(&gw, b"http/1.1");
    let admin = Listener::plain("admin", gw.admin, "/healthz", 200);
    // The admin listener's clients use their own addresses: the test harness reads metrics
    // from 127.0.0.1 through it.
    for (l, [one, two, three]) in [
        (&https, [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]]),
        (&admin, [[127, 0, 0, 11], [127, 0, 0, 12], [127, 0, 0, 13]]),
    ] {
        // Two from one address are served and stay open; a third from that address is
        // refused before any TLS work, while another address still gets in.
        let mut held = Vec::new();
        for source in [one, one, two] {
            let mut c = l.connect_from(source).await.unwrap();
            l.ask(&mut c).await;
            held.push(c);
            if held.len() == 2 {
                assert!(refused(l, one).await, "{}: a third from one client", l.name);
            }
        }
        // The listener's cap (3) is reached: a new address is refused as well.
        assert!(
            refused(l, three).await,
            "{}: beyond the listener cap",
            l.name
        );
        drop(held.swap_remove(0));
        // The freed slot is usable again (the close reaches the gateway asynchronously).
        assert!(
            served(l, one).await,
            "{}: a freed slot is used again",
            l.name
        );
    }
    // The connections held above are closed; the gateway sees that asynchronously.
    assert!(served(&admin, [127, 0, 0, 1]).await);
    for (listener, reason) in [
        ("https", "max_connections_per_client"),
        ("https", "max_connections"),
        ("admin", "max_connections_per_client"),
        ("admin", "max_connections"),
    ] {
        let series = format!(
            "gatehouse_gateway_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
        );
        gw.wait_metric(&series, 1.0, 5).await;
    }
}

#[tokio::test]
async fn plain_http_proxy_mode_behind_a_tls_terminator() {
    let key = TestKey::new(23);
    let echo = Echo::start(key.jwks.clone()).await;
    // TLS ends at the platform: the HTTPS listener is off.
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("listen.https", "")
            .set("listen.http_mode", "proxy")
            .set("server.trusted_proxies", list(&["127.0.0.1"]));
    })
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gw.https)).is_err(),
        "no HTTPS listener"
    );
    let plain = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/open/p", gw.http);
    let r = crate::helpers::Resp::from(plain.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["headers"]["x-forwarded-proto"], "http");
    assert!(r.header("x-request-id").is_some());
    // An answer over plain HTTP carries no HSTS (RFC 6797 §7.2); the other security headers
    // it does.
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // The platform's proxy says the client used https.
    let r = crate::helpers::Resp::from(
        plain
            .get(&url)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(r.body["headers"]["x-forwarded-for"], "203.0.113.9");
    // It reaches the client over HTTPS: HSTS goes with it.
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    // Auth is enforced the same way on this listener.
    let r = crate::helpers::Resp::from(
        plain
            .get(format!("http://127.0.0.1:{}/api/x", gw.http))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = crate::helpers::Resp::from(
        plain
            .get(format!("http://127.0.0.1:{}/api/x", gw.http))
            .bearer_auth(key.token("u1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_target_answering_5xx_in_a_row_is_ejected() {
    let key = TestKey::new(24);
    let jwks = Echo::start(key.jwks.clone()).await;
    let good = Echo::start(key.jwks.clone()).await;
    let bad = Echo::start(key.jwks.clone()).await;
    bad.fail_with.store(500, Ordering::Relaxed);
    let gw = Gateway::start_with(
        Options {
            targets: vec![good.addr, bad.addr],
            jwks: jwks.addr,
        },
        |c| {
            c.set("upstreams.echo.eject_after_5xx", 3)
                .set("upstreams.echo.eject_seconds", 60);
        },
    )
    .await;
    let mut errors = 0;
    for _ in 0..40 {
        let r = gw.get("/open/x", None).await;
        match r.status {
            200 => {}
            500 => errors += 1,
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    // Round robin sends every other request to the bad target until its third error in a row.
    assert_eq!(
        errors, 3,
        "the failing target is ejected after three errors"
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_health_but_no_reload() {
    let key = TestKey::new(26);
    let echo = Echo::start(key.jwks.clone()).await;
    let port = crate::helpers::free_port();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("listen.metrics", format!("127.0.0.1:{port}"));
    })
    .await;
    let plain = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let r = plain.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("gatehouse_gateway_"));
    for path in ["/healthz", "/readyz"] {
        let r = plain.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = plain.post(format!("{base}/reload")).send().await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "reload only on the loopback admin listener"
    );
    assert_eq!(gw.admin("/healthz").await.status, 200);
}
