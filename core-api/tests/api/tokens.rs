//! Access-token attacks (docs/security.md, RFC 8725): every one is a 401 with a Bearer challenge.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, spawn_app};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
}

async fn me(app: &TestApp, token: &str) -> Resp {
    app.get("/api/me", Some(token)).await
}

fn assert_invalid(r: &Resp, case: &str) {
    assert_eq!(r.status, 401, "{case}: {}", r.text);
    assert_eq!(r.problem()["type"], "invalid_token", "{case}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
        "{case}"
    );
}

#[tokio::test]
async fn missing_token_is_401_with_challenge() {
    let app = spawn_app().await;
    let r = app.get("/api/me", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\"")
    );
    assert_eq!(
        r.problem(),
        json!({"type": "unauthorized", "title": "Authentication required", "status": 401,
               "detail": "Send an access token as 'Authorization: Bearer <token>'."})
    );
    let r = app
        .send(
            app.http
                .get(app.url("/api/me"))
                .header("authorization", "Basic dXNlcjpwYXNz"),
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn a_properly_signed_token_is_accepted() {
    let app = spawn_app().await;
    let u = app.user().await;
    let t = app.sign(&app.valid_claims(u.id), |_| {});
    assert_eq!(me(&app, &t).await.status, 200);
}

#[tokio::test]
async fn forged_and_altered_tokens_are_refused() {
    let app = spawn_app().await;
    let u = app.user().await;
    let claims = app.valid_claims(u.id);
    let kid = app.state.signer().kid().to_string();

    // alg "none" with no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        b64(&claims)
    );
    assert_invalid(&me(&app, &none).await, "alg none");

    // HS256 "signed" with the public key published in the JWKS (algorithm confusion).
    let jwks = app.get("/.well-known/jwks.json", None).await.body;
    let public_x = jwks["keys"][0]["x"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid.clone());
    let hs =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(public_x.as_bytes())).unwrap();
    assert_invalid(&me(&app, &hs).await, "HS256 with public key");
    let raw_pub = URL_SAFE_NO_PAD.decode(&public_x).unwrap_or_default();
    let hs2 = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&raw_pub)).unwrap();
    assert_invalid(&me(&app, &hs2).await, "HS256 with raw public key");

    // Payload changed after signing (another user's id).
    let good = app.sign(&claims, |_| {});
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims.clone();
    evil["sub"] = json!(uuid::Uuid::new_v4().to_string());
    let tampered = format!("{}.{}.{}", parts[0], b64(&evil), parts[2]);
    assert_invalid(&me(&app, &tampered).await, "tampered payload");

    // Signed by a different key under our kid.
    let other = core_api::auth::keys::generate_ed25519_pem().unwrap();
    let key =
        EncodingKey::from_ed_pem(secrecy::ExposeSecret::expose_secret(&other).as_bytes()).unwrap();
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid.clone());
    assert_invalid(
        &me(&app, &jsonwebtoken::encode(&h, &claims, &key).unwrap()).await,
        "foreign key",
    );

    // Unknown kid; missing kid; embedded jwk / jku are never followed.
    assert_invalid(
        &me(&app, &app.sign(&claims, |h| h.kid = Some("nope".into()))).await,
        "unknown kid",
    );
    assert_invalid(
        &me(&app, &app.sign(&claims, |h| h.kid = None)).await,
        "missing kid",
    );
    let t = app.sign(&claims, |h| {
        h.kid = None;
        h.jku = Some("https://evil.example/jwks.json".into());
    });
    assert_invalid(&me(&app, &t).await, "jku");

    // Garbage and refresh tokens used as access tokens.
    assert_invalid(&me(&app, "not.a.jwt").await, "garbage");
    assert_invalid(&me(&app, &u.refresh).await, "refresh token as access token");
}

#[tokio::test]
async fn claims_and_type_are_enforced() {
    let app = spawn_app().await;
    let u = app.user().await;
    let now = gatehouse_common::jwt::now_secs();
    let with = |k: &str, v: Value| {
        let mut c = app.valid_claims(u.id);
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = app.valid_claims(u.id);
        c.as_object_mut().map(|o| o.remove(k));
        c
    };
    let cases = [
        (
            "future nbf",
            app.sign(&with("nbf", json!(now + 300)), |_| {}),
        ),
        (
            "wrong iss",
            app.sign(&with("iss", json!("https://evil.example")), |_| {}),
        ),
        ("missing iss", app.sign(&without("iss"), |_| {})),
        (
            "wrong aud",
            app.sign(&with("aud", json!("someone-else")), |_| {}),
        ),
        ("missing aud", app.sign(&without("aud"), |_| {})),
        ("missing sub", app.sign(&without("sub"), |_| {})),
        ("missing exp", app.sign(&without("exp"), |_| {})),
        (
            "string exp",
            app.sign(&with("exp", json!((now + 600).to_string())), |_| {}),
        ),
        (
            "typ JWT",
            app.sign(&app.valid_claims(u.id), |h| h.typ = Some("JWT".into())),
        ),
        (
            "no typ",
            app.sign(&app.valid_claims(u.id), |h| h.typ = None),
        ),
        (
            "crit",
            app.sign(&app.valid_claims(u.id), |h| {
                h.crit = Some(vec!["exp".into()])
            }),
        ),
    ];
    for (case, token) in cases {
        assert_invalid(&me(&app, &token).await, case);
    }
}

#[tokio::test]
async fn expired_token_is_token_expired() {
    let app = spawn_app().await;
    let u = app.user().await;
    let now = gatehouse_common::jwt::now_secs();
    let mut c = app.valid_claims(u.id);
    c["iat"] = json!(now - 1000);
    c["nbf"] = json!(now - 1000);
    c["exp"] = json!(now - 60);
    let r = me(&app, &app.sign(&c, |_| {})).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\", error=\"invalid_token\"")
    );
    assert_eq!(
        r.problem(),
        json!({"type": "token_expired", "title": "Access token expired", "status": 401,
               "detail": "Refresh the access token."})
    );
}

/// Key rotation with overlap: tokens signed by the previous key keep working while its public
/// key is configured, and the JWKS publishes both.
#[tokio::test]
async fn previous_keys_verify_during_rotation() {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use secrecy::ExposeSecret;

    let old = spawn_app().await;
    let u = old.user().await;
    let old_kid = old.state.signer().kid().to_string();
    let old_public = ed25519_dalek::SigningKey::from_pkcs8_pem(old.signing_pem.expose_secret())
        .unwrap()
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();

    // The new deployment signs with a new key and keeps the old public key.
    let new = crate::helpers::spawn_app_with(|s| {
        s.auth.previous_keys = vec![core_api::settings::PreviousKey {
            algorithm: core_api::settings::SigningAlgorithm::EdDSA,
            public_key: old_public.clone(),
            kid: None,
        }];
    })
    .await;
    let jwks = new.get("/.well-known/jwks.json", None).await.body;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kids, [new.state.signer().kid(), old_kid.as_str()]);
    let token = old.sign(&new.valid_claims(u.id), |_| {});
    let me = new.get("/api/me", Some(&token)).await;
    // The user lives in the old app's database; what matters is that the token verified.
    assert_eq!(
        me.status, 404,
        "verified (then no such user here): {}",
        me.text
    );

    // Without the old key configured the same token is refused.
    let plain = spawn_app().await;
    assert_eq!(plain.get("/api/me", Some(&token)).await.status, 401);
}
