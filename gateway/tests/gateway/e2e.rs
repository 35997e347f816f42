//! Through the gateway to the real core API and PostgreSQL: the browser-facing flow.

use std::time::Duration;

use core_api::settings::{Config, Settings};
use gatehouse_common::config::Environment;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{Gateway, Options};

async fn core_api() -> std::net::SocketAddr {
    let base = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL is set by make test");
    let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let name = format!("gw_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
    core_api::migrate::run(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.database.url = SecretString::from(url);
    s.auth.bcrypt_cost = 4;
    s.auth.insecure_test_bcrypt = true;
    s.auth.signing_key = core_api::auth::keys::generate_ed25519_pem().unwrap();
    s.auth.issuer = crate::helpers::ISSUER.into();
    let app = core_api::Application::build(Config {
        env: Environment::Development,
        settings: s,
        files: vec![],
    })
    .await
    .unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run(std::future::pending()));
    addr
}

#[tokio::test]
async fn register_login_and_tasks_through_the_gateway() {
    let api = core_api().await;
    let options = Options {
        targets: vec![api],
        jwks: api,
    };
    let gw = Gateway::start_with(options, |c| {
        c.route("/auth/", &[("cors", "web".into())]);
    })
    .await;
    let creds = json!({"email": "e2e@example.com", "password": "correct horse battery"});
    let r = gw
        .send(gw.client.post(gw.url("/auth/register")).json(&creds))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let login = gw
        .send(
            gw.client
                .post(gw.url("/auth/login"))
                .json(&creds)
                .header("origin", "https://app.example.com"),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert_eq!(
        login.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        login.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let me = gw.get("/api/me", Some(&token)).await;
    assert_eq!(
        (me.status, me.body["id"].as_str()),
        (200, Some(id.as_str()))
    );
    // The request id the gateway chose is the one the API answered with.
    assert_eq!(me.header("x-request-id").map(str::len), Some(36));
    let created = gw
        .send(
            gw.client
                .post(gw.url(&format!("/api/users/{id}/tasks")))
                .bearer_auth(&token)
                .json(&json!({"title": "through the edge"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let list = gw
        .get(&format!("/api/users/{id}/tasks"), Some(&token))
        .await;
    assert_eq!(list.body["items"][0]["title"], "through the edge");
    let other = gw
        .get(
            &format!("/api/users/{}/tasks", uuid::Uuid::new_v4()),
            Some(&token),
        )
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(
        gw.get(&format!("/api/users/{id}/tasks"), None).await.status,
        401
    );
}
