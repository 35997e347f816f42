//! Database faults and transport: pool exhaustion, the database going away and coming back,
//! TLS to PostgreSQL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::helpers::{TestApp, TestUser, base_url, connect, spawn_app, spawn_app_with};

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
    let recovered = lists_again(&app, &u).await;
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

/// A PostgreSQL cluster of this test's own (scripts/pg.sh), so that restarting it disturbs no
/// other test.
struct OwnCluster {
    dir: std::path::PathBuf,
    port: u16,
    url: String,
    admin_url: String,
}

impl OwnCluster {
    fn script() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg.sh").to_string()
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("gh-pgr-{}", uuid::Uuid::new_v4().simple()));
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .arg(&dir)
            .output()
            .expect("scripts/pg.sh");
        assert!(
            out.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout).to_string();
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} in {env}"))
                .to_string()
        };
        Self {
            port: var("PGPORT").parse().expect("port"),
            url: var("DATABASE_URL"),
            admin_url: var("TEST_PG_ADMIN_URL"),
            dir,
        }
    }

    fn stop(&self) {
        let ok = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(&self.dir)
            .status()
            .expect("pg.sh stop");
        assert!(ok.success());
    }

    fn start_again(&self) {
        let out = std::process::Command::new(Self::script())
            .arg("start")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .expect("pg.sh start");
        assert!(
            out.status.success(),
            "pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Concurrent task writes while PostgreSQL is restarted (fast shutdown: sessions are
/// terminated, transactions rolled back, as in a managed database's maintenance restart).
/// Every write answered 2xx is in the database afterwards; every other answer is a clean 503
/// with Retry-After; nothing hangs; service resumes by itself.
#[tokio::test]
async fn writes_during_a_postgres_restart_are_committed_or_a_clean_503() {
    let cluster = OwnCluster::start();
    core_api::migrate::run(&cluster.url, std::time::Duration::from_secs(10))
        .await
        .expect("migrate");
    let url = cluster.url.clone();
    let app = spawn_app_with(move |s| {
        s.database.url = secrecy::SecretString::from(url);
        s.database.acquire_timeout_ms = 500;
    })
    .await;
    let u = app.user().await;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .expect("client");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = JoinSet::new();
    for w in 0..6 {
        let http = http.clone();
        let url = app.url(&app.tasks_path(u.id));
        let token = u.access.clone();
        let stop = stop.clone();
        writers.spawn(async move {
            let mut outcomes = Vec::new();
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let title = format!("w{w}-{k}");
                k += 1;
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"title": title}))
                    .send()
                    .await
                    .expect("an answer, never a hang or a reset");
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                outcomes.push((title, status, retry_after, body));
                if status != 201 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            outcomes
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    cluster.stop();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cluster.start_again();
    // Writes go on until the service has certainly resumed.
    let mut resumed = false;
    for _ in 0..100 {
        let r = app
            .create_task(&u, json!({"title": "probe after restart"}))
            .await;
        if r.status == 201 {
            resumed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(resumed, "service resumed by itself after the restart");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut created = Vec::new();
    let (mut ok, mut unavailable) = (0, 0);
    while let Some(outcomes) = writers.join_next().await {
        for (title, status, retry_after, body) in outcomes.expect("writer") {
            match status {
                201 => {
                    ok += 1;
                    created.push(title);
                }
                503 => {
                    unavailable += 1;
                    assert!(retry_after, "503 without Retry-After: {body}");
                    assert_eq!(body["type"], "database_unavailable", "{body}");
                }
                other => panic!("write {title} answered {other}: {body}"),
            }
        }
    }
    assert!(
        ok > 0 && unavailable > 0,
        "{ok} created, {unavailable} refused"
    );
    let admin = {
        let db = format!(
            "{}/gatehouse",
            cluster.admin_url.trim_end_matches("/postgres")
        );
        let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    };
    let stored: std::collections::HashSet<String> = admin
        .query("SELECT title FROM tasks WHERE owner_id = $1", &[&u.id])
        .await
        .expect("tasks")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = created.iter().filter(|t| !stored.contains(*t)).collect();
    assert!(lost.is_empty(), "answered 201 but not stored: {lost:?}");
    let open: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'gatehouse-core-api' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(open, 0);
}

/// A database that refuses new sessions (an operator's `ALLOW_CONNECTIONS false` during
/// maintenance: SQLSTATE 55000 at connect) is "unavailable", not an internal error.
#[tokio::test]
async fn a_database_refusing_connections_gives_503_then_recovers() {
    let app = spawn_app().await;
    let u = app.user().await;
    let name = app.db_url.rsplit('/').next().unwrap().to_string();
    let admin = connect(&base_url()).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    // Pooled sessions die first (57P01); once they are gone every request needs a new one,
    // which PostgreSQL refuses (55000). Both are 503, never 500.
    for _ in 0..12 {
        let r = app.get(&app.tasks_path(u.id), Some(&u.access)).await;
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(r.problem()["type"], "database_unavailable");
        assert_eq!(r.header("retry-after"), Some("2"));
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let recovered = lists_again(&app, &u).await;
    assert!(recovered, "service resumed by itself");
}

/// Whether `u`'s task list answers 200 again within 5 s (the service resumes by itself).
async fn lists_again(app: &TestApp, u: &TestUser) -> bool {
    for _ in 0..50 {
        if app.get(&app.tasks_path(u.id), Some(&u.access)).await.status == 200 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
