//! Keys from the JWKS URL as the issuer changes them (issue 9, item 12): a key replaced under
//! the same `kid` is installed and the old one refused; tokens with a new `kid` arriving
//! together share one fetch and are all accepted. Keys over an https JWKS URL with a private
//! CA, and from PEM files instead of a URL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Echo, Gateway, Options, TestKey};

/// The test configuration refetches at most every second (`min_refetch_seconds = 1`); let the
/// fetch made at start-up age past that.
async fn after_min_refetch() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

/// A token answered from the verified-token cache is answered as when it was verified:
/// whatever the spelling of `Bearer` and the blanks around it; a token whose subject cannot go
/// upstream as `X-User-Id` is refused every time, not only the first; a byte added to a cached
/// token makes it no token at all.
#[tokio::test]
async fn a_cached_token_is_answered_as_when_it_was_verified() {
    let (echo, gw, key) = crate::edge::setup().await;
    let token = key.token("alice");
    for auth in [
        format!("Bearer {token}"),
        format!("bearer   {token} \t"),
        format!("BEARER {token}"),
    ] {
        let r = gw
            .send(
                gw.client
                    .get(gw.url("/api/me"))
                    .header("authorization", &auth),
            )
            .await;
        assert_eq!(r.status, 200, "{auth}: {}", r.text);
        assert_eq!(r.body["headers"]["x-user-id"], "alice");
    }
    let unforwardable = key.token("al\u{ef}ce");
    for attempt in 1..=2 {
        let r = gw.get("/api/me", Some(&unforwardable)).await;
        assert_eq!(r.status, 401, "attempt {attempt}: {}", r.text);
        assert_eq!(r.body["type"], "invalid_token", "attempt {attempt}");
    }
    let mut appended = format!("Bearer {token}").into_bytes();
    appended.push(0xE9);
    let value = reqwest::header::HeaderValue::from_bytes(&appended).unwrap();
    let r = gw
        .send(
            gw.client
                .get(gw.url("/api/me"))
                .header("authorization", value),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\""),
        "no token at all"
    );
    assert_eq!(
        echo.count("/api/me"),
        3,
        "only the three good requests went upstream"
    );
}

#[tokio::test]
async fn a_key_replaced_under_its_kid_is_installed_and_the_old_one_refused() {
    let old = TestKey::new(51);
    let echo = Echo::start(old.jwks.clone()).await;
    let gw = Gateway::start(Options::echo(&echo)).await;
    let old_token = old.token("alice");
    // Verified, and now in the verified-token cache.
    assert_eq!(gw.get("/api/me", Some(&old_token)).await.status, 200);
    assert_eq!(gw.get("/api/me", Some(&old_token)).await.status, 200);
    after_min_refetch().await;

    // The issuer replaces the key but keeps its kid.
    let new = TestKey::new(52);
    assert_eq!(new.kid, old.kid);
    echo.set_jwks(new.jwks.clone());
    let r = gw.get("/api/me", Some(&new.token("bob"))).await;
    assert_eq!(r.status, 200, "a token of the new key: {}", r.text);
    assert_eq!(r.body["headers"]["x-user-id"], "bob");
    // The old key's verdicts are gone with it, cached or not.
    let r = gw.get("/api/me", Some(&old_token)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["type"], "invalid_token");
}

#[tokio::test]
async fn tokens_with_a_new_kid_arriving_together_share_one_fetch() {
    let old = TestKey::new(53);
    let echo = Echo::start(old.jwks.clone()).await;
    let gw = Arc::new(Gateway::start(Options::echo(&echo)).await);
    after_min_refetch().await;

    // A new key is published next to the old one; the JWKS answers slowly, so every request
    // below arrives while the one fetch is in flight.
    let rotated = TestKey::with_kid(54, "rotated-key");
    echo.set_jwks(json!({"keys": [old.jwk(), rotated.jwk()]}));
    echo.jwks_delay_ms.store(500, Ordering::SeqCst);
    let before = echo.jwks_fetches.load(Ordering::SeqCst);
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (gw, token) = (gw.clone(), rotated.token(&format!("user{i}")));
        requests.spawn(async move {
            let r = gw.get("/api/me", Some(&token)).await;
            (r.status, r.text)
        });
    }
    while let Some(done) = requests.join_next().await {
        let (status, text) = done.unwrap();
        assert_eq!(status, 200, "every request waits for the fetch: {text}");
    }
    assert_eq!(
        echo.jwks_fetches.load(Ordering::SeqCst) - before,
        1,
        "one fetch for all of them"
    );
    // The old key still verifies.
    assert_eq!(
        gw.get("/api/me", Some(&old.token("dave"))).await.status,
        200
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
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        let url = format!("https://localhost:{}/.well-known/jwks.json", addr.port());
        c.set("jwt.jwks_url", url).set("jwt.jwks_ca_file", ca);
    })
    .await;
    let r = gw.get("/api/x", Some(&key.token("u1"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
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

/// Keys from PEM files instead of a JWKS URL.
#[tokio::test]
async fn keys_from_pem_files() {
    let key = TestKey::new(11);
    let echo = Echo::start(serde_json::json!({"keys": []})).await;
    let pem = std::env::temp_dir().join(format!("gw-key-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&pem, &key.public_pem).unwrap();
    let pem_path = pem.display().to_string();
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("jwt.jwks_url", "").push(
            "jwt.key_files",
            &[
                ("kid", "test-key".into()),
                ("algorithm", "EdDSA".into()),
                ("path", pem_path.into()),
            ],
        );
    })
    .await;
    let r = gw.get("/api/me", Some(&key.token("carol"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["headers"]["x-user-id"], "carol");
    assert_eq!(
        gw.get("/api/me", Some(&TestKey::new(12).token("carol")))
            .await
            .status,
        401
    );
    let _ = std::fs::remove_file(&pem);
}
