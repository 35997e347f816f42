//! Rate limits shared by several gateways through Redis (`store = "redis"`), and what happens
//! when Redis goes away: each instance's own bucket decides.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{Echo, Gateway, Options, TestConfig, TestKey, free_port, list};

/// A route `/shared/` behind the limit `shared` (one per second, `burst`) kept in the Redis
/// on `port`.
fn shared_limit(c: &mut TestConfig, port: u16, burst: i64) {
    c.route("/shared/", &[("limits", list(&["shared"]))])
        // One token a minute: the test sees only the burst, however slow the machine is.
        .set("limits.shared.per_minute", 1)
        .set("limits.shared.burst", burst)
        .set("limits.shared.store", "redis")
        .set("redis.url", format!("redis://127.0.0.1:{port}"))
        .set("redis.timeout_ms", 200);
}

/// A throwaway redis-server (Debian package) on a free loopback port, no persistence.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let redis = Self {
            port,
            child: Some(
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server (Debian package) is installed by make test"),
            ),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_redis_limit_is_one_bucket_across_gateways_and_local_when_redis_fails() {
    let mut redis = Redis::start().await;
    let key = TestKey::new(41);
    let echo = Echo::start(key.jwks.clone()).await;
    let tweak = |c: &mut TestConfig| shared_limit(c, redis.port, 4);
    let (a, b) = tokio::join!(
        Gateway::start_with(Options::echo(&echo), tweak),
        Gateway::start_with(Options::echo(&echo), tweak)
    );

    // Four requests from one client, alternating between the gateways: one bucket of four.
    for i in 0..4 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get("/shared/x", None).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
    for gw in [&a, &b] {
        let r = gw.get("/shared/x", None).await;
        assert_eq!(r.status, 429, "the shared bucket is empty: {}", r.text);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        a.metric("gatehouse_gateway_rate_limit_store_errors_total")
            .await,
        0.0
    );

    // Redis gone: each gateway's own bucket decides (still limited, never unlimited), at once
    // (after the first failure Redis is skipped for a while instead of waited for).
    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(a.get("/shared/x", None).await.status);
    }
    assert_eq!(&statuses[..4], &[200, 200, 200, 200], "{statuses:?}");
    assert_eq!(&statuses[4..], &[429, 429], "{statuses:?}");
    assert!(
        a.metric("gatehouse_gateway_rate_limit_store_errors_total")
            .await
            >= 6.0
    );
    a.wait_log("rate limit store (Redis) failed", 10).await;

    // Redis back (empty): after the pause that follows a failure, the shared bucket is used
    // again by both gateways.
    let _redis = Redis::start_on(redis.port).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let errors = a
        .metric("gatehouse_gateway_rate_limit_store_errors_total")
        .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let path = "/shared/again";
        statuses.push(gw.get(path, None).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "shared again");
    assert_eq!(
        a.metric("gatehouse_gateway_rate_limit_store_errors_total")
            .await,
        errors
    );
}

/// Issue 9, item 10 on the shared store: addresses of one IPv6 /64 share one Redis bucket
/// across gateways; another /64 has its own.
#[tokio::test]
async fn a_redis_limit_keys_ipv6_clients_by_their_64() {
    let redis = Redis::start().await;
    let key = TestKey::new(42);
    let echo = Echo::start(key.jwks.clone()).await;
    let start = || {
        Gateway::start_with(Options::echo(&echo), |c| {
            shared_limit(c, redis.port, 2);
            c.set("server.trusted_proxies", list(&["127.0.0.1"]));
        })
    };
    let (a, b) = tokio::join!(start(), start());
    let from = |gw: &Gateway, client: &str| {
        gw.client
            .get(gw.url("/shared/x"))
            .header("x-forwarded-for", client)
    };
    let mut statuses = Vec::new();
    for (gw, client) in [
        (&a, "2001:db8:9:9::1"),
        (&b, "2001:db8:9:9::2"),
        (&a, "2001:db8:9:9:1:2:3:4"),
        (&b, "2001:db8:9:a::1"),
    ] {
        statuses.push(gw.send(from(gw, client)).await.status);
    }
    assert_eq!(statuses, [200, 200, 429, 200]);
    assert_eq!(
        a.metric("gatehouse_gateway_rate_limit_store_errors_total")
            .await,
        0.0,
        "Redis decided"
    );
}
