//! The admin listener as a browser attacker meets it (issue 9, item 13): a page that re-points
//! its own name at 127.0.0.1 (DNS rebinding) or posts a form to 127.0.0.1 cross-site gets
//! nothing; `POST /reload` needs the admin token; outside development it is off without one.

use crate::helpers::{Echo, Gateway, Options, TestKey, free_port, plain_client};

#[tokio::test]
async fn rebinding_and_cross_site_pages_get_nothing_and_reload_needs_the_token() {
    let key = TestKey::new(61);
    let echo = Echo::start(key.jwks.clone()).await;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let metrics_port = free_port();
    let gw = Gateway::start_in_env(
        Options::echo(&echo),
        &[("GATEWAY_ADMIN_TOKEN", &token)],
        |c| {
            c.set("admin.token", "${GATEWAY_ADMIN_TOKEN:-}")
                .set("listen.metrics", format!("127.0.0.1:{metrics_port}"));
        },
    )
    .await;
    let client = plain_client();
    let url = |path: &str| gw.admin_url(path);
    let bearer = format!("Bearer {token}");
    let rebound = format!("rebind.attacker.example:{}", gw.admin);
    let send = |r| gw.send(r);

    // DNS rebinding: the page's own name, now resolving to 127.0.0.1, is in Host.
    let r = send(client.get(url("/metrics")).header("host", &rebound)).await;
    r.assert_problem(421, "misdirected_request");
    assert!(!r.text.contains("gatehouse_gateway_"), "no metrics leak");
    let r = send(
        client
            .post(url("/reload"))
            .header("host", &rebound)
            .header("authorization", &bearer),
    )
    .await;
    r.assert_problem(421, "misdirected_request");

    // A cross-site form post to 127.0.0.1: the browser adds Origin / Sec-Fetch-Site.
    let r = send(
        client
            .post(url("/reload"))
            .header("origin", "https://attacker.example")
            .header("authorization", &bearer),
    )
    .await;
    r.assert_problem(403, "cross_site_refused");
    let r = send(
        client
            .post(url("/reload"))
            .header("sec-fetch-site", "cross-site")
            .header("authorization", &bearer),
    )
    .await;
    r.assert_problem(403, "cross_site_refused");

    // The token: missing or wrong is 401, right reloads.
    let r = send(client.post(url("/reload"))).await;
    r.assert_problem(401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse-admin\"")
    );
    let r = send(
        client
            .post(url("/reload"))
            .header("authorization", format!("Bearer {}x", &token[1..])),
    )
    .await;
    r.assert_problem(401, "unauthorized");
    assert_eq!(
        gw.metric("gatehouse_gateway_reloads_total").await,
        0.0,
        "nothing refused above reached the reload"
    );
    let r = send(client.post(url("/reload")).header("authorization", &bearer)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "reloaded");
    assert_eq!(
        gw.metric("gatehouse_gateway_reloads_total{outcome=\"ok\"}")
            .await,
        1.0
    );

    // Tools keep working: localhost names, the container healthcheck.
    let r = send(
        client
            .get(url("/metrics"))
            .header("host", format!("localhost:{}", gw.admin)),
    )
    .await;
    assert_eq!(r.status, 200);
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["healthcheck", "--admin", &format!("127.0.0.1:{}", gw.admin)])
        .status()
        .unwrap();
    assert!(ok.success(), "gateway healthcheck");

    // The read-only metrics listener: reached over the network by address or by name (as
    // Prometheus scrapes `gateway:9091` in compose), never by a page, and without /reload.
    let metrics = |path: &str| format!("http://127.0.0.1:{metrics_port}{path}");
    assert_eq!(send(client.get(metrics("/readyz"))).await.status, 200);
    let r = send(
        client
            .get(metrics("/metrics"))
            .header("host", format!("gateway:{metrics_port}")),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        client
            .get(metrics("/metrics"))
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    r.assert_problem(403, "cross_site_refused");
    let r = send(
        client
            .post(metrics("/reload"))
            .header("authorization", &bearer),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn outside_development_reload_over_http_is_off_without_a_token() {
    let key = TestKey::new(62);
    let echo = Echo::start(key.jwks.clone()).await;
    let certs = std::env::temp_dir().join(format!("gw-admin-{}", uuid::Uuid::new_v4().simple()));
    gateway::tls::self_signed(&["localhost".into()], &certs).unwrap();
    let gw = Gateway::start_in_env(Options::echo(&echo), &[("APP_ENV", "staging")], |c| {
        c.set("tls.source", "files").certificate(&certs);
    })
    .await;
    let r = gw.reload().await;
    r.assert_problem(403, "reload_disabled");
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("GATEWAY_ADMIN_TOKEN") && d.contains("SIGHUP")),
        "{}",
        r.text
    );
    assert_eq!(gw.admin("/healthz").await.status, 200);
    let _ = std::fs::remove_dir_all(&certs);
}

/// What an operator's monitoring reads: health, readiness and the metrics of a served request.
#[tokio::test]
async fn admin_listener_reports_health_and_metrics() {
    let (_echo, gw, _key) = crate::edge::setup().await;
    gw.get("/open/x", None).await;
    assert_eq!(gw.admin("/healthz").await.status, 200);
    assert_eq!(
        gw.admin("/readyz").await.body,
        serde_json::json!({"status": "ready"})
    );
    // Counted when the request is logged, just after its answer went out: the client can ask
    // before that.
    let served = r#"gatehouse_gateway_http_requests_total{route="/open/",status="200"}"#;
    gw.wait_metric(served, 1.0, 10).await;
    let m = gw.admin("/metrics").await.text;
    assert!(
        m.contains(r#"gatehouse_gateway_http_requests_total{route="/open/",status="200"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gatehouse_gateway_jwks_refreshes_total{outcome="ok"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gatehouse_gateway_upstream_healthy_targets{upstream="echo"} 1"#),
        "{m}"
    );
}
