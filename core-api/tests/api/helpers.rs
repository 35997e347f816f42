//! Test harness: a fresh database per test (cloned from a migrated template), the real
//! application in-process on port 0, typed request helpers and a generated user.
//!
//! Needs `TEST_DATABASE_URL` (a non-superuser role with CREATEDB), which `make test` sets
//! after starting a throwaway cluster. `TEST_LOG=1` switches logs on.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use core_api::Application;
use core_api::settings::{Config, Settings};
use core_api::state::AppState;
use gatehouse_common::config::Environment;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, oneshot};
use uuid::Uuid;

pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect(
        "TEST_DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL",
    )
}

/// Replaces the database name of a postgres URL.
pub fn with_db(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (url, String::new()),
    };
    let cut = head.rfind('/').expect("database URL has a path");
    format!("{}/{db}{query}", &head[..cut])
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A migrated template database, created once per cluster and schema version. An advisory lock
/// keeps parallel test processes from racing.
async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let mut hash: u64 = 0xcbf29ce484222325;
            let mut entries: Vec<_> =
                std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
                    .expect("migrations dir")
                    .map(|e| e.expect("entry").path())
                    .collect();
            entries.sort();
            for path in entries {
                for b in std::fs::read(path).expect("read migration") {
                    hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
                }
            }
            let name = format!("gatehouse_tpl_{hash:016x}");
            let admin = connect(&base_url()).await;
            admin
                .execute("SELECT pg_advisory_lock(7331)", &[])
                .await
                .expect("lock");
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .expect("lookup")
                .is_some();
            if !exists {
                let building = format!("{name}_building");
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .await
                    .expect("drop");
                admin
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .expect("create template");
                core_api::migrate::run(&with_db(&base_url(), &building), Duration::from_secs(5))
                    .await
                    .expect("migrate template");
                admin
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await
                    .expect("rename template");
            }
            admin
                .execute("SELECT pg_advisory_unlock(7331)", &[])
                .await
                .expect("unlock");
            name
        })
        .await
        .clone()
}

/// A fresh, migrated database for one test; returns its URL.
pub async fn fresh_database() -> String {
    let tpl = template().await;
    let name = format!("t_{}", Uuid::new_v4().simple());
    let admin = connect(&base_url()).await;
    // CREATE DATABASE … TEMPLATE fails while another session is connected to the template;
    // nobody connects to it after creation, but retry briefly in case of a race.
    for attempt in 0..20 {
        match admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {tpl}"))
            .await
        {
            Ok(()) => break,
            Err(e) if attempt < 19 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    with_db(&base_url(), &name)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db_url: String,
    pub http: reqwest::Client,
    pub state: Arc<AppState>,
    pub signing_pem: SecretString,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_settings(db_url: &str, pem: &SecretString) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.database.url = SecretString::from(db_url.to_string());
    s.database.pool_size = 10;
    s.database.acquire_timeout_ms = 1_000;
    // Generous: opening a connection (SCRAM) takes longer than a second on a loaded 2-core CI
    // machine, and a test must not fail for that.
    s.database.connect_timeout_ms = 5_000;
    // Documented test setting: bcrypt cost 4 keeps hundreds of registrations fast. The API
    // refuses it outside development.
    s.auth.bcrypt_cost = 4;
    s.auth.insecure_test_bcrypt = true;
    s.auth.signing_key = pem.clone();
    s.auth.issuer = "https://gatehouse.test".into();
    s.auth.audience = "gatehouse-api".into();
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        gatehouse_common::telemetry::init(gatehouse_common::telemetry::LogFormat::Pretty, "debug");
    }
    let db_url = fresh_database().await;
    let pem = core_api::auth::keys::generate_ed25519_pem().expect("key");
    let mut settings = test_settings(&db_url, &pem);
    tweak(&mut settings);
    let config = Config {
        env: Environment::Development,
        settings,
        files: vec![],
    };
    let app = Application::build(config).await.expect("build app");
    let addr = app.local_addr();
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        db_url,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        state,
        signing_pem: pem,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

pub use gatehouse_common::testkit::Resp;

impl TestApp {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        Resp::from(req.send().await.expect("request")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send(self.http.delete(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Resp {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    pub async fn patch(&self, path: &str, body: Value, token: &str) -> Resp {
        self.send(
            self.http
                .patch(self.url(path))
                .json(&body)
                .bearer_auth(token),
        )
        .await
    }

    pub async fn register(&self, email: &str, password: &str) -> Resp {
        self.post(
            "/auth/register",
            json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Resp {
        self.post(
            "/auth/login",
            json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    pub async fn user(&self) -> TestUser {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let password = "correct horse battery staple".to_string();
        let r = self.register(&email, &password).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let l = self.login(&email, &password).await;
        assert_eq!(l.status, 200, "{}", l.text);
        TestUser {
            id: r.body["id"].as_str().unwrap().parse().unwrap(),
            email,
            password,
            access: l.body["access_token"].as_str().unwrap().to_string(),
            refresh: l.body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    pub fn tasks_path(&self, user: Uuid) -> String {
        format!("/api/users/{user}/tasks")
    }

    pub async fn create_task(&self, user: &TestUser, body: Value) -> Resp {
        self.post(&self.tasks_path(user.id), body, Some(&user.access))
            .await
    }

    /// A new task of `user`; returns its path.
    pub async fn task_of(&self, user: &TestUser) -> String {
        let r = self.create_task(user, json!({"title": "t"})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        format!(
            "{}/{}",
            self.tasks_path(user.id),
            r.body["id"].as_str().expect("task id")
        )
    }

    /// Signs arbitrary claims with the app's real key and kid (for forged-token tests).
    pub fn sign(&self, claims: &Value, tweak: impl FnOnce(&mut Header)) -> String {
        let key = EncodingKey::from_ed_pem(self.signing_pem.expose_secret().as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.state.signer().kid().to_string());
        tweak(&mut header);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// Claims the API accepts for `sub`, to be altered by a test.
    pub fn valid_claims(&self, sub: Uuid) -> Value {
        let now = gatehouse_common::jwt::now_secs();
        json!({
            "iss": "https://gatehouse.test", "aud": "gatehouse-api", "sub": sub.to_string(),
            "iat": now, "nbf": now, "exp": now + 600, "jti": Uuid::new_v4().to_string(),
        })
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.db_url).await
    }

    /// The test database as the cluster superuser (bypasses row-level security).
    pub async fn admin_db(&self) -> tokio_postgres::Client {
        let admin =
            std::env::var("TEST_PG_ADMIN_URL").expect("TEST_PG_ADMIN_URL is set by make test");
        let db = self.db_url.rsplit('/').next().unwrap_or_default();
        connect(&with_db(&admin, db)).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Every test ends with the proof that no connection of the application is left inside
        // a transaction (a pooled connection in an open transaction would run the next
        // request's statements inside it).
        if !std::thread::panicking() {
            let db = self
                .db_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let open = open_transactions(&db);
            assert!(
                open.is_empty(),
                "connections of the application left inside a transaction: {open:?}"
            );
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Sessions of the core API on database `db` that sit inside a transaction, as
/// `pg_stat_activity` sees them (blocking: usable from `Drop`).
pub fn open_transactions(db: &str) -> Vec<String> {
    let db = db.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let admin = connect(&base_url()).await;
            admin
                .query(
                    "SELECT pid::text || ' ' || state || ': ' || left(query, 80) \
                     FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name = 'gatehouse-core-api' \
                       AND state LIKE 'idle in transaction%'",
                    &[&db],
                )
                .await
                .expect("pg_stat_activity")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        })
    })
    .join()
    .expect("open_transactions thread")
}
