//! Keys from the JWKS URL as the issuer changes them (issue 9, item 12): a key replaced under
//! the same `kid` is installed and the old one refused; tokens with a new `kid` arriving
//! together share one fetch and are all accepted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Echo, Gateway, Options, TestKey};

/// The test configuration refetches at most every second (`min_refetch_seconds = 1`); let the
/// fetch made at start-up age past that.
async fn after_min_refetch() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
