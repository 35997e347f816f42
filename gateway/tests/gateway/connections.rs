//! Connection-level limits and modes: the slowloris header deadline, the connection cap, the
//! plain-HTTP proxy mode for platforms that terminate TLS, passive ejection of a target that
//! answers with server errors, and keys fetched over https.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Echo, Gateway, Options, TestKey, tls_connect};

fn with_server_settings(extra: &'static str) -> impl FnOnce(String) -> String {
    move |t| t.replace("[server]\n", &format!("[server]\n{extra}\n"))
}

/// Reads until the peer closes (Ok(bytes)) or `limit` passes (Err).
async fn read_to_close(
    s: &mut (impl AsyncReadExt + Unpin),
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

#[tokio::test]
async fn a_header_dribbled_slowly_is_cut_off_but_idle_keepalive_is_not() {
    let key = TestKey::new(21);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(
        Options::echo(&echo),
        with_server_settings("header_timeout_seconds = 1"),
    )
    .await;

    // Slowloris: a valid request header, one byte every 200 ms, never finished.
    let mut slow = tls_connect(&gw).await.unwrap();
    slow.write_all(b"GET /open/slow HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let dribble = async {
        for b in b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dribble)
        .await
        .expect("the gateway closes a connection whose header never completes");
    assert!(
        !echo
            .seen
            .lock()
            .unwrap()
            .paths
            .contains(&"/open/slow".to_string()),
        "nothing was forwarded"
    );
    assert!(
        gw.metric("gatehouse_gateway_connections_rejected_total{listener=\"https\",reason=\"header_timeout\"}").await >= 1.0
    );

    // A keep-alive connection that idles longer than the header deadline between requests is
    // still served: the clock starts with a request's first byte.
    let mut idle = tls_connect(&gw).await.unwrap();
    let request = b"GET /open/idle HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for round in 0..2 {
        idle.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
    let key = TestKey::new(22);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(
        Options::echo(&echo),
        with_server_settings("max_connections = 2"),
    )
    .await;
    let ask = b"GET /open/cap HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tls_connect(&gw).await.unwrap();
        c.write_all(ask).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c);
    }
    // The third is closed at accept: the handshake fails or the connection ends unanswered.
    match tls_connect(&gw).await {
        Err(_) => {}
        Ok(mut c) => {
            let _ = c.write_all(ask).await;
            let got = read_to_close(&mut c, Duration::from_secs(5)).await;
            assert_eq!(got.map(|b| b.len()), Ok(0), "no answer beyond the cap");
        }
    }
    assert!(
        gw.metric("gatehouse_gateway_connections_rejected_total{listener=\"https\",reason=\"max_connections\"}").await >= 1.0
    );
    assert_eq!(
        gw.metric("gatehouse_gateway_connections_active{listener=\"https\"}")
            .await,
        2.0
    );
    drop(held.pop());
    // The freed slot is usable again (the close reaches the gateway asynchronously).
    let mut served = false;
    for _ in 0..50 {
        if gw.get("/open/again", None).await.status == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn plain_http_proxy_mode_behind_a_tls_terminator() {
    let key = TestKey::new(23);
    let echo = Echo::start(key.jwks.clone()).await;
    // TLS ends at the platform: the HTTPS listener is off.
    let gw = Gateway::start_with(Options::echo(&echo), |t| {
        let https = t
            .lines()
            .find(|l| l.starts_with("https = "))
            .unwrap_or_default()
            .to_string();
        t.replace(&https, "https = \"\"\nhttp_mode = \"proxy\"")
            .replace(
                "[server]\n",
                "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
            )
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
            extra: String::new(),
        },
        |t| {
            t.replace(
                "[upstreams.echo]\n",
                "[upstreams.echo]\neject_after_5xx = 3\neject_seconds = 60\n",
            )
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
async fn keys_from_an_https_jwks_url_with_a_private_ca() {
    let key = TestKey::new(25);
    let echo = Echo::start(key.jwks.clone()).await;
    let dir = std::env::temp_dir().join(format!("gw-jwks-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = https_jwks(key.jwks.clone(), &dir.join("ca.pem")).await;
    let ca = dir.join("ca.pem").display().to_string();
    let gw = Gateway::start_with(Options::echo(&echo), move |t| {
        let plain = format!("jwks_url = \"http://{}/.well-known/jwks.json\"", echo_addr(&t));
        t.replace(
            &plain,
            &format!("jwks_url = \"https://localhost:{}/.well-known/jwks.json\"\njwks_ca_file = \"{ca}\"", addr.port()),
        )
    })
    .await;
    let r = gw.get("/api/x", Some(&key.token("u1"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The JWKS address the generated configuration points at.
fn echo_addr(config: &str) -> String {
    config
        .split("jwks_url = \"http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Serves `jwks` over TLS with a fresh self-signed certificate for `localhost`, written to
/// `ca_path` for the gateway to trust.
async fn https_jwks(jwks: serde_json::Value, ca_path: &std::path::Path) -> std::net::SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(ca_path, cert.cert.pem()).unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = jwks.to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_health_but_no_reload() {
    let key = TestKey::new(26);
    let echo = Echo::start(key.jwks.clone()).await;
    let port = crate::helpers::free_port();
    let gw = Gateway::start_with(Options::echo(&echo), move |t| {
        t.replace(
            "[listen]\n",
            &format!("[listen]\nmetrics = \"127.0.0.1:{port}\"\n"),
        )
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
