//! Registration, login, refresh rotation with reuse detection, logout, passwords.

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with};

pub fn email() -> String {
    format!("ada-{}@example.com", Uuid::new_v4().simple())
}

#[tokio::test]
async fn register_creates_an_account() {
    let app = spawn_app().await;
    let e = email();
    let r = app
        .register(
            &format!("  {}  ", e.to_uppercase()),
            "correct horse battery",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body["email"], e,
        "e-mail normalised to trimmed lower case"
    );
    assert!(
        r.body["id"]
            .as_str()
            .and_then(|s| s.parse::<Uuid>().ok())
            .is_some()
    );
    assert!(r.body["created_at"].as_str().is_some());
    assert_eq!(
        r.body.as_object().map(|o| o.len()),
        Some(3),
        "no password or hash in the body"
    );
    let row = app
        .db()
        .await
        .query_one(
            "SELECT email FROM users WHERE id = $1::text::uuid",
            &[&r.body["id"].as_str()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), e);
}

#[tokio::test]
async fn register_twice_is_409() {
    let app = spawn_app().await;
    let e = email();
    assert_eq!(app.register(&e, "correct horse battery").await.status, 201);
    let r = app.register(&e.to_uppercase(), "another password").await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.problem(),
        json!({"type": "email_taken", "title": "E-mail address already registered", "status": 409})
    );
}

#[tokio::test]
async fn register_validation_lists_every_field() {
    let app = spawn_app().await;
    let r = app.register("not-an-email", "short").await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.problem(),
        json!({
            "type": "validation_failed", "title": "Request validation failed", "status": 422,
            "detail": "One or more fields are invalid; see errors.",
            "errors": [
                {"field": "email", "message": "must be an e-mail address like name@example.com"},
                {"field": "password", "message": "must be at least 8 characters"}
            ]
        })
    );
    let r = app
        .post(
            "/auth/register",
            json!({"email": email(), "password": "x".repeat(257)}),
            None,
        )
        .await;
    assert_eq!(
        r.body["errors"],
        json!([{"field": "password", "message": "must be at most 256 characters"}])
    );
}

#[tokio::test]
async fn register_rejects_unknown_and_missing_fields_and_bad_json() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/auth/register",
            json!({"email": email(), "password": "correct horse", "admin": true}),
            None,
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["errors"],
        json!([{"field": "admin", "message": "is not a known field"}])
    );
    let r = app
        .post("/auth/register", json!({"email": email()}), None)
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.body["errors"],
        json!([{"field": "password", "message": "is required"}])
    );
    let r = app
        .send(
            app.http
                .post(app.url("/auth/register"))
                .header("content-type", "application/json")
                .body("{\"email\":"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.problem()["type"], "malformed_request");
}

#[tokio::test]
async fn wrong_content_type_is_415_and_large_body_413() {
    let app = spawn_app().await;
    let r = app
        .send(
            app.http
                .post(app.url("/auth/register"))
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.problem()["type"], "unsupported_media_type");
    let big = json!({"email": email(), "password": "x".repeat(70_000)});
    let r = app.post("/auth/register", big, None).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.problem(),
        json!({"type": "payload_too_large", "title": "Payload too large", "status": 413,
               "detail": "The request body must be at most 65536 bytes."})
    );
    // Streamed without Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 8192])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = app
        .send(
            app.http
                .post(app.url("/auth/register"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn login_returns_a_token_pair() {
    let app = spawn_app().await;
    let e = email();
    app.register(&e, "correct horse battery").await;
    let r = app.login(&e.to_uppercase(), "correct horse battery").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    assert_eq!(
        r.body["refresh_expires_in"]
            .as_i64()
            .map(|s| (2_591_990..=2_592_000).contains(&s)),
        Some(true)
    );
    assert_eq!(r.body["refresh_token"].as_str().map(str::len), Some(43));
    let header =
        jsonwebtoken::decode_header(r.body["access_token"].as_str().unwrap_or_default()).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(app.state.signer().kid()));
    let me = app.get("/api/me", r.body["access_token"].as_str()).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], e);
    // Refresh tokens are stored only as hashes.
    let stored: Vec<u8> = app
        .db()
        .await
        .query_one("SELECT token_hash FROM refresh_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    assert_ne!(
        stored,
        r.body["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
    );
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = spawn_app().await;
    let e = email();
    app.register(&e, "correct horse battery").await;
    let wrong = app.login(&e, "wrong password!").await;
    let unknown = app.login(&email(), "correct horse battery").await;
    let malformed = app.login("nobody", "x").await;
    for r in [&wrong, &unknown, &malformed] {
        assert_eq!(r.status, 401);
        assert_eq!(
            r.problem(),
            json!({"type": "invalid_credentials", "title": "Invalid credentials", "status": 401,
                   "detail": "The e-mail address or password is incorrect."})
        );
    }
    let metrics = app.get("/metrics", None).await.text;
    assert!(
        metrics.contains(r#"gatehouse_api_auth_failures_total{reason="invalid_credentials"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn repeated_logins_for_one_account_are_rate_limited() {
    let app = spawn_app_with(|s| s.auth.login_attempts_per_minute = 3).await;
    let e = email();
    app.register(&e, "correct horse battery").await;
    for _ in 0..3 {
        assert_eq!(app.login(&e, "wrong password!").await.status, 401);
    }
    let r = app.login(&e, "correct horse battery").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.problem()["type"], "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another account is not affected.
    let other = email();
    app.register(&other, "correct horse battery").await;
    assert_eq!(app.login(&other, "correct horse battery").await.status, 200);
}

#[tokio::test]
async fn stored_hash_is_bcrypt_2b_with_the_configured_cost() {
    let app = spawn_app_with(|s| s.auth.bcrypt_cost = 5).await;
    let e = email();
    app.register(&e, "correct horse battery").await;
    let hash: String = app
        .db()
        .await
        .query_one("SELECT password_hash FROM users WHERE email = $1", &[&e])
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("$2b$05$"), "{hash}");
    assert_eq!(hash.len(), 60);
}

/// bcrypt reads 72 bytes; two pass phrases sharing their first 72 bytes must not both work.
#[tokio::test]
async fn passwords_longer_than_72_bytes_are_not_truncated() {
    let app = spawn_app().await;
    let e = email();
    let prefix = "p".repeat(72);
    assert_eq!(
        app.register(&e, &format!("{prefix}-first")).await.status,
        201
    );
    assert_eq!(app.login(&e, &format!("{prefix}-first")).await.status, 200);
    assert_eq!(app.login(&e, &format!("{prefix}-second")).await.status, 401);
    // 64 multi-byte characters (256 bytes) are accepted too.
    let e2 = email();
    let wide = "é".repeat(64);
    assert_eq!(app.register(&e2, &wide).await.status, 201);
    assert_eq!(app.login(&e2, &wide).await.status, 200);
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_is_spent() {
    let app = spawn_app().await;
    let u = app.user().await;
    let r = app
        .post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new_refresh = r.body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(new_refresh, u.refresh);
    assert_eq!(
        app.get("/api/me", r.body["access_token"].as_str())
            .await
            .status,
        200
    );
    // The new one works once more.
    let r2 = app
        .post("/auth/refresh", json!({"refresh_token": new_refresh}), None)
        .await;
    assert_eq!(r2.status, 200);
}

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_family() {
    let app = spawn_app().await;
    let u = app.user().await;
    let first = app
        .post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
        .await;
    let current = first.body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // An attacker replays the spent token.
    let replay = app
        .post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
        .await;
    assert_eq!(replay.status, 401);
    assert_eq!(
        replay.problem(),
        json!({"type": "invalid_refresh_token", "title": "Invalid refresh token", "status": 401,
               "detail": "The refresh token is invalid, expired, revoked or already used; sign in again."})
    );
    // The legitimate holder's current token is now revoked too, and that is persisted.
    let r = app
        .post("/auth/refresh", json!({"refresh_token": current}), None)
        .await;
    assert_eq!(r.status, 401);
    let db = app.db().await;
    let live: i64 = db
        .query_one(
            "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL",
            &[&u.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0);
    // A fresh login starts a new, working family.
    let l = app.login(&u.email, &u.password).await;
    assert_eq!(
        app.post(
            "/auth/refresh",
            json!({"refresh_token": l.body["refresh_token"]}),
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn concurrent_refreshes_have_exactly_one_winner() {
    let app = spawn_app().await;
    let u = app.user().await;
    let body = json!({"refresh_token": u.refresh});
    let attempts: Vec<_> = (0..8)
        .map(|_| app.post("/auth/refresh", body.clone(), None))
        .collect();
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let refused = results.iter().filter(|r| r.status == 401).count();
    let statuses: Vec<_> = results.iter().map(|r| (r.status, r.text.clone())).collect();
    assert_eq!((ok, refused), (1, 7), "{statuses:?}");
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let app = spawn_app().await;
    let u = app.user().await;
    let r = app
        .post("/auth/logout", json!({"refresh_token": u.refresh}), None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        app.post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
            .await
            .status,
        401
    );
    // Unknown or malformed tokens get the same answer.
    assert_eq!(
        app.post("/auth/logout", json!({"refresh_token": "nope"}), None)
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn refresh_rejects_garbage_and_expired_tokens() {
    let app = spawn_app().await;
    let u = app.user().await;
    assert_eq!(
        app.post("/auth/refresh", json!({"refresh_token": "garbage"}), None)
            .await
            .status,
        401
    );
    app.db()
        .await
        .execute(
            "UPDATE refresh_tokens SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        app.post("/auth/refresh", json!({"refresh_token": u.refresh}), None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn refresh_without_a_token_is_invalid_refresh_token() {
    let app = spawn_app().await;
    let r = app.post("/auth/refresh", json!({}), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.problem()["type"], "invalid_refresh_token");
    assert_eq!(app.post("/auth/logout", json!({}), None).await.status, 204);
}

#[tokio::test]
async fn a_null_refresh_token_is_a_validation_error() {
    let app = spawn_app().await;
    for path in ["/auth/refresh", "/auth/logout"] {
        let r = app.post(path, json!({"refresh_token": null}), None).await;
        assert_eq!(r.status, 422, "{path}: {}", r.text);
        assert_eq!(r.problem()["errors"][0]["field"], "refresh_token");
    }
}
