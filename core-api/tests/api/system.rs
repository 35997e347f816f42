//! Health, readiness, routing errors, request ids, metrics, JWKS and the OpenAPI document.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let h = app.get("/healthz", None).await;
    assert_eq!((h.status, h.body.clone()), (200, json!({"status": "ok"})));
    let r = app.get("/readyz", None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"status": "ready"}))
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn unknown_route_is_a_problem_404() {
    let app = spawn_app().await;
    let r = app.get("/nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.problem(),
        json!({"type": "not_found", "title": "Not found", "status": 404})
    );
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn_app().await;
    let r = app.send(app.http.put(app.url("/auth/login"))).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.problem()["type"], "method_not_allowed");
    let r = app
        .send(app.http.request(reqwest::Method::TRACE, app.url("/api/me")))
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let r = app
        .send(
            app.http
                .get(app.url("/healthz"))
                .header("x-request-id", "abc-123"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = app
        .send(
            app.http
                .get(app.url("/healthz"))
                .header("x-request-id", "bad id; with spaces"),
        )
        .await;
    let id = r.header("x-request-id").unwrap_or_default();
    assert_eq!(
        id.len(),
        36,
        "a fresh UUID replaces an unacceptable id: {id}"
    );
}

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let app = spawn_app().await;
    let r = app.get("/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    let keys = r.body["keys"].as_array().cloned().unwrap_or_default();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(
        (
            k["kty"].as_str(),
            k["crv"].as_str(),
            k["alg"].as_str(),
            k["use"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );
    assert_eq!(k["kid"].as_str(), Some(app.state.signer().kid()));
    assert!(k.get("d").is_none(), "private part never published");
}

#[tokio::test]
async fn metrics_count_requests_and_pool() {
    let app = spawn_app().await;
    app.get("/healthz", None).await;
    app.get("/api/me", None).await;
    let r = app.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains(
            r#"gatehouse_api_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains(r#"gatehouse_api_auth_failures_total{reason="missing_token"} 1"#),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains(r#"gatehouse_api_db_pool_connections{state="max"} 10"#),
        "{}",
        r.text
    );
    assert!(r.text.contains("gatehouse_api_db_up 1"), "{}", r.text);
    assert!(
        r.text
            .contains("gatehouse_api_http_request_duration_seconds_bucket")
    );
}

/// The committed OpenAPI document describes exactly the routes the server answers.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let app = spawn_app().await;
    let r = app.get("/openapi.json", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let mut documented = BTreeSet::new();
    for (path, item) in r.body["paths"].as_object().cloned().unwrap_or_default() {
        for method in item.as_object().cloned().unwrap_or_default().keys() {
            if [
                "get", "post", "put", "patch", "delete", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let served: BTreeSet<String> = core_api::ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(move |m| format!("{m} {}", r.path)))
        .collect();
    assert_eq!(documented, served);
}

/// Shutdown stops accepting but lets an in-flight request finish.
#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    // bcrypt cost 10 keeps the registration busy for a while.
    let app = crate::helpers::spawn_app_with(|s| {
        s.auth.bcrypt_cost = 10;
        s.auth.insecure_test_bcrypt = false;
    })
    .await;
    let base = app.base.clone();
    let http = app.http.clone();
    let in_flight = tokio::spawn(async move {
        http.post(format!("{base}/auth/register"))
            .json(&json!({"email": "drain@example.com", "password": "correct horse battery"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let addr = app.addr;
    app.stop().await;
    assert_eq!(in_flight.await.ok().and_then(Result::ok), Some(201));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
