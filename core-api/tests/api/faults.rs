//! Database faults and transport: pool exhaustion, the database going away and coming back,
//! TLS to PostgreSQL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::helpers::{base_url, spawn_app, spawn_app_with};

#[tokio::test]
async fn exhausted_pool_answers_503_within_the_wait() {
    let app = spawn_app().await;
    let u = app.user().await;
    let pool = app.state.db.pool().clone();
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        held.push(pool.get().await.expect("connection"));
    }
    let r = app.get(&app.tasks_path(u.id), Some(&u.access)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(
        r.problem(),
        json!({"type": "database_unavailable", "title": "Database unavailable", "status": 503,
               "detail": "The service cannot reach its database right now; retry shortly."})
    );
    drop(held);
    assert_eq!(
        app.get(&app.tasks_path(u.id), Some(&u.access)).await.status,
        200
    );
    // Counted for the pool-saturation alert (deploy/prometheus).
    let metrics = app.get("/metrics", None).await.text;
    assert!(
        metrics.contains("gatehouse_api_server_errors_total{type=\"database_unavailable\"} 1"),
        "{metrics}"
    );
}

/// A TCP relay in front of PostgreSQL that can be cut (connections reset, new ones refused)
/// and restored on the same port: the database "going away" without disturbing other tests.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let relay = Self {
            addr,
            target,
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let tasks = self.tasks.clone();
        self.tasks.lock().expect("lock").spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                tasks.lock().expect("lock").spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
    }

    fn cut(&self) {
        self.tasks.lock().expect("lock").abort_all();
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind relay");
        self.serve(listener);
    }
}

fn host_port(url: &str) -> SocketAddr {
    let after_at = url.split_once('@').map(|(_, r)| r).unwrap_or(url);
    let hp = after_at.split('/').next().unwrap_or_default();
    hp.parse().expect("URL host:port is an IP socket address")
}

#[tokio::test]
async fn database_outage_gives_503_then_recovers_without_restart() {
    let target = host_port(&base_url());
    let relay = Relay::start(target).await;
    let relay_addr = relay.addr;
    let app = spawn_app_with(move |s| {
        use secrecy::ExposeSecret;
        let url = s
            .database
            .url
            .expose_secret()
            .replace(&target.to_string(), &relay_addr.to_string());
        s.database.url = secrecy::SecretString::from(url);
    })
    .await;
    let u = app.user().await;
    assert_eq!(
        app.get(&app.tasks_path(u.id), Some(&u.access)).await.status,
        200
    );

    relay.cut();
    let r = app.get(&app.tasks_path(u.id), Some(&u.access)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.problem()["type"], "database_unavailable");
    assert_eq!(app.get("/readyz", None).await.status, 503);
    // Liveness does not depend on the database; the unreachable-database alert's signal drops.
    assert_eq!(app.get("/healthz", None).await.status, 200);
    assert!(
        app.get("/metrics", None)
            .await
            .text
            .contains("gatehouse_api_db_up 0")
    );

    relay.restore().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app.get(&app.tasks_path(u.id), Some(&u.access)).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "service resumed by itself once the database was back"
    );
    assert_eq!(app.get("/readyz", None).await.status, 200);
    assert!(
        app.get("/metrics", None)
            .await
            .text
            .contains("gatehouse_api_db_up 1")
    );
}

/// `sslmode=verify-full` with the cluster's CA connects over TLS; without that CA the
/// connection is refused, so the verification is real. `require` encrypts without verifying.
#[tokio::test]
async fn tls_to_postgres() {
    let Ok(ca) = std::env::var("TEST_PG_CA_FILE") else {
        panic!("TEST_PG_CA_FILE is not set: run the tests with `make test`");
    };
    let with_tls = |mode: &str, root: Option<&str>| {
        let ca = ca.clone();
        let mode = mode.to_string();
        let root = root.map(str::to_string);
        move |s: &mut core_api::settings::Settings| {
            use secrecy::ExposeSecret;
            let mut url = s
                .database
                .url
                .expose_secret()
                .replace("@127.0.0.1:", "@localhost:");
            url.push_str(&format!("?sslmode={mode}"));
            match root.as_deref() {
                Some("ca") => url.push_str(&format!("&sslrootcert={ca}")),
                Some(other) => url.push_str(&format!("&sslrootcert={other}")),
                None => {}
            }
            s.database.url = secrecy::SecretString::from(url);
        }
    };

    let app = spawn_app_with(with_tls("verify-full", Some("ca"))).await;
    assert_eq!(app.get("/readyz", None).await.status, 200);
    app.user().await;
    let db = app.db().await;
    let encrypted: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'gatehouse-core-api' AND a.datname = current_database() AND s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(encrypted >= 1, "the pool's connections use TLS");

    let app = spawn_app_with(with_tls("require", None)).await;
    assert_eq!(app.get("/readyz", None).await.status, 200);

    // The public webpki roots do not include the test CA: verify-full must refuse.
    let app = spawn_app_with(with_tls("verify-full", None)).await;
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, 503);
}
