//! Rate limits at the edge: 429 with `Retry-After` and `RateLimit-*`, per subject, the limit
//! that fired named in a metric and the access log, IPv6 clients by their /64.

use crate::edge::{assert_problem, setup};
use crate::helpers::{Echo, Gateway, Options, TestKey, list};

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let (_echo, gw, key) = setup().await;
    for _ in 0..3 {
        assert_eq!(gw.get("/tight/x", None).await.status, 200);
    }
    let r = gw
        .send(
            gw.client
                .get(gw.url("/tight/x"))
                .header("origin", "https://app.example.com"),
        )
        .await;
    assert_problem(&r, 429, "rate_limited");
    // One token a minute: the next one is up to a minute away.
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((50..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("ratelimit-reset"),
        r.header("retry-after"),
        "RateLimit-Reset is the wait too"
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    // Per subject: alice is limited, bob is not.
    let (alice, bob) = (key.token("alice"), key.token("bob"));
    for _ in 0..2 {
        assert_eq!(gw.get("/limited/x", Some(&alice)).await.status, 200);
    }
    assert_eq!(gw.get("/limited/x", Some(&alice)).await.status, 429);
    assert_eq!(gw.get("/limited/x", Some(&bob)).await.status, 200);
}

/// Issue 11: a 429 names the limit that fired, in a metric label and in the access log line,
/// and still counts as `rejections_total{reason="rate_limited"}`.
#[tokio::test]
async fn a_429_names_the_limit_that_fired() {
    let key = TestKey::new(14);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("log.level", "warn,access=info");
    })
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("/tight/x", None).await.status, 200);
    }
    assert_eq!(gw.get("/tight/x", None).await.status, 429);
    let alice = key.token("alice");
    for _ in 0..2 {
        assert_eq!(gw.get("/limited/x", Some(&alice)).await.status, 200);
    }
    assert_eq!(gw.get("/limited/x", Some(&alice)).await.status, 429);
    let by = |limit: &str| format!("gatehouse_gateway_rate_limited_total{{limit=\"{limit}\"}}");
    assert_eq!(gw.metric(&by("tight")).await, 1.0);
    assert_eq!(gw.metric(&by("per_subject")).await, 1.0);
    assert_eq!(
        gw.metric("gatehouse_gateway_rejections_total{reason=\"rate_limited\"}")
            .await,
        2.0
    );
    let rate_limited = |log: &str| log.matches("\"decision\":\"rate_limited\"").count();
    let lines = gw.log_when(|l| rate_limited(l) >= 2, 10).await;
    let refused: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"decision\":\"rate_limited\""))
        .collect();
    assert_eq!(refused.len(), 2, "{lines}");
    assert!(refused[0].contains("\"limit\":\"tight\""), "{}", refused[0]);
    assert!(
        refused[1].contains("\"limit\":\"per_subject\"")
            && refused[1].contains("\"user_id\":\"alice\""),
        "{}",
        refused[1]
    );
}

/// Issue 9, item 10: one IPv6 /64 is one client. The gateway is reached through a trusted
/// proxy that forwards IPv6 client addresses (the tests run on IPv4 loopback).
#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
    let key = TestKey::new(13);
    let echo = Echo::start(key.jwks.clone()).await;
    let gw = Gateway::start_with(Options::echo(&echo), |c| {
        c.set("server.trusted_proxies", list(&["127.0.0.1"]));
    })
    .await;
    let from = |client: &'static str| {
        let gw = &gw;
        async move {
            gw.send(
                gw.client
                    .get(gw.url("/tight/x"))
                    .header("x-forwarded-for", client),
            )
            .await
        }
    };
    // `tight` allows a burst of 3: three addresses of one /64 use it up...
    let first = from("2001:db8:1:2::1").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        first.body["headers"]["x-forwarded-for"], "2001:db8:1:2::1",
        "the upstream still sees the client's own address"
    );
    assert_eq!(from("2001:db8:1:2::2").await.status, 200);
    assert_eq!(from("2001:db8:1:2:ffff:ffff:ffff:fffe").await.status, 200);
    // ...so a fourth address of that /64 is limited,
    let r = from("2001:db8:1:2:abcd::4").await;
    assert_problem(&r, 429, "rate_limited");
    // while the next /64 has its own bucket.
    assert_eq!(from("2001:db8:1:3::1").await.status, 200);

    // An IPv4 client written as IPv4-mapped IPv6 is that IPv4 client.
    for _ in 0..3 {
        let r = from("::ffff:192.0.2.1").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["headers"]["x-forwarded-for"], "192.0.2.1");
    }
    assert_eq!(from("192.0.2.1").await.status, 429);
    assert_eq!(from("192.0.2.2").await.status, 200);
}
