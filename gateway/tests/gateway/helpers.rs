//! Harness: the real `gateway` binary on free loopback ports with a generated configuration,
//! in front of a small echo upstream (which also serves the JWKS of a key the tests sign
//! with), plus an HTTPS client that trusts the gateway's development CA.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use crate::config::{Options, TestConfig, list};

pub const ISSUER: &str = "https://issuer.test";
pub const KID: &str = "test-key";

/// The signing key the tests use and the JWKS the echo upstream publishes for it.
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwks: Value,
    pub public_pem: String,
}

impl TestKey {
    pub fn new(seed: u8) -> Self {
        Self::with_kid(seed, KID)
    }

    /// A key published and used under `kid`.
    pub fn with_kid(seed: u8, kid: &str) -> Self {
        let pem = KeypairBytes {
            secret_key: [seed; 32],
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
        let public = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(public.as_bytes())}]});
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let public_pem = public.to_public_key_pem(LineEnding::LF).unwrap();
        Self {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            jwks,
            public_pem,
        }
    }

    /// This key's JWK (the single entry of `jwks`).
    pub fn jwk(&self) -> Value {
        self.jwks["keys"][0].clone()
    }

    pub fn claims(&self, sub: &str) -> Value {
        let now = gatehouse_common::jwt::now_secs();
        json!({"iss": ISSUER, "aud": "gatehouse-api", "sub": sub, "iat": now, "nbf": now, "exp": now + 600})
    }

    pub fn sign(&self, claims: &Value, tweak: impl FnOnce(&mut Header)) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("at+jwt".into());
        h.kid = Some(self.kid.clone());
        tweak(&mut h);
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.claims(sub), |_| {})
    }
}

/// What the echo upstream saw.
#[derive(Default)]
pub struct Seen {
    pub paths: Vec<String>,
}

/// An upstream that answers every request with a JSON description of it.
pub struct Echo {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    /// When non-zero, every proxied path is answered with this status (health stays 200).
    pub fail_with: Arc<std::sync::atomic::AtomicU16>,
    /// How many times the JWKS was fetched.
    pub jwks_fetches: Arc<std::sync::atomic::AtomicUsize>,
    /// Each JWKS answer waits this long first (ms).
    pub jwks_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    jwks: Arc<Mutex<Value>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Echo {
    pub async fn start(jwks: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut echo = Self {
            addr,
            seen: Arc::default(),
            fail_with: Arc::default(),
            jwks_fetches: Arc::default(),
            jwks_delay_ms: Arc::default(),
            jwks: Arc::new(Mutex::new(jwks)),
            tasks: Arc::default(),
        };
        echo.serve(listener);
        echo
    }

    fn serve(&mut self, listener: TcpListener) {
        let seen = self.seen.clone();
        let jwks = self.jwks.clone();
        let fail_with = self.fail_with.clone();
        let (fetches, delay) = (self.jwks_fetches.clone(), self.jwks_delay_ms.clone());
        let port = self.addr.port();
        let tasks = self.tasks.clone();
        self.tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let jwks = jwks.clone();
                let fail_with = fail_with.clone();
                let (fetches, delay) = (fetches.clone(), delay.clone());
                tasks.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let seen = seen.clone();
                        let jwks = jwks.clone();
                        let fail = fail_with.load(std::sync::atomic::Ordering::Relaxed);
                        let (fetches, delay) = (fetches.clone(), delay.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let proxied = path != "/healthz" && path != "/.well-known/jwks.json";
                            let body = match path.as_str() {
                                "/.well-known/jwks.json" => {
                                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    let ms = delay.load(std::sync::atomic::Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    jwks.lock().unwrap().to_string()
                                }
                                "/healthz" => r#"{"status":"ok"}"#.to_string(),
                                _ => {
                                    seen.lock().unwrap().paths.push(path.clone());
                                    let delay = req.uri().query().and_then(|q| q.strip_prefix("delay_ms=")).and_then(|d| d.parse().ok());
                                    if let Some(ms) = delay {
                                        tokio::time::sleep(Duration::from_millis(ms)).await;
                                    }
                                    let method = req.method().to_string();
                                    // A field sent more than once reads as its lines joined
                                    // (RFC 9110 §5.3), so a duplicate shows.
                                    let mut headers = serde_json::Map::<String, Value>::new();
                                    for (k, v) in req.headers() {
                                        let v = v.to_str().unwrap_or("");
                                        let joined = match headers.get(k.as_str()).and_then(Value::as_str) {
                                            Some(before) => format!("{before}, {v}"),
                                            None => v.to_string(),
                                        };
                                        headers.insert(k.to_string(), json!(joined));
                                    }
                                    let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                                    json!({"port": port, "method": method, "path": path, "headers": headers, "body_len": body}).to_string()
                                }
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            if fail != 0 && proxied {
                                *resp.status_mut() = hyper::StatusCode::from_u16(fail).unwrap();
                            }
                            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            resp.headers_mut().insert("server", "echo/1.2.3".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }

    /// Closes the listener and every open connection: the target is gone.
    pub fn stop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }

    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Publishes another JWK Set from now on.
    pub fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().unwrap() = jwks;
    }

    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .paths
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client that never goes through a proxy, for the plain-HTTP admin and metrics listeners.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A port nothing listens on, for a process the test starts. Picked below Linux's ephemeral
/// range (32768-60999), where neither `bind(…:0)` elsewhere nor the source port of an outgoing
/// connection can take it between this check and the process binding it, and handed out once
/// per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Each test process starts at its own place in 20000-31999, so parallel test binaries
    // (gateway and core-api tests, several worktrees) rarely meet.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() % 600) * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = 20_000 + (NEXT.fetch_add(1, Ordering::SeqCst) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running gateway process.
pub struct Gateway {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub client: reqwest::Client,
    /// Environment variables set for the process on top of the defaults (`APP_ENV`...).
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// `listen.https` is on (one test turns it off).
    https_on: bool,
}

impl Gateway {
    pub async fn start(o: Options) -> Self {
        Self::start_with(o, |_| {}).await
    }

    /// Like `start`, with settings changed from the defaults of `config_text`.
    pub async fn start_with(o: Options, tweak: impl FnOnce(&mut TestConfig)) -> Self {
        Self::start_on((free_port(), free_port(), free_port()), o, tweak).await
    }

    /// Like `start_with`, on the given (https, http, admin) ports.
    pub async fn start_on(
        ports: (u16, u16, u16),
        o: Options,
        tweak: impl FnOnce(&mut TestConfig),
    ) -> Self {
        Self::start_full(ports, o, &[], tweak).await
    }

    /// Like `start_with`, with environment variables (e.g. another `APP_ENV`).
    pub async fn start_in_env(
        o: Options,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut TestConfig),
    ) -> Self {
        Self::start_full((free_port(), free_port(), free_port()), o, env, tweak).await
    }

    async fn start_full(
        (https, http, admin): (u16, u16, u16),
        o: Options,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut TestConfig),
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("gw-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.toml");
        let mut settings = TestConfig::new(&o, https, http, admin, &dir);
        tweak(&mut settings);
        let https_on = settings.https_enabled();
        std::fs::write(&config, settings.to_string()).unwrap();
        let mut gw = Self {
            https,
            http,
            admin,
            client: reqwest::Client::new(),
            config,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            https_on,
        };
        gw.spawn(false);
        gw.wait_ready().await;
        gw.client = gw.https_client(false);
        gw
    }

    pub fn spawn(&mut self, upgrade: bool) {
        self.child = Some(self.command(upgrade).spawn().expect("start gateway"));
    }

    /// The command that starts this gateway (`upgrade`: take the sockets over).
    pub fn command(&self, upgrade: bool) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("run").arg("--config").arg(&self.config);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let log = std::fs::File::create(self.dir.join(if upgrade {
            "gateway-2.log"
        } else {
            "gateway.log"
        }))
        .unwrap();
        cmd.env("APP_ENV", "development")
            .env("GATEWAY_UPGRADE_SOCK", self.dir.join("upgrade.sock"))
            .env("GATEWAY_PID_FILE", self.dir.join("gateway.pid"))
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    /// Stops the process (SIGTERM, graceful) and starts it again with the same configuration.
    pub async fn restart(&mut self) {
        self.signal("TERM");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let _ = std::fs::rename(
            self.dir.join("gateway.log"),
            self.dir.join("gateway-before-restart.log"),
        );
        self.spawn(false);
        self.wait_ready().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Waits up to `seconds` for the log to contain `needle`; fails with the log.
    pub async fn wait_log(&self, needle: &str, seconds: u64) {
        self.log_when(|log| log.contains(needle), seconds).await;
    }

    /// The log, once `ready(log)` holds (polled for up to `seconds`); fails with the log. The
    /// log is written off the thread that did the work (a non-blocking writer), so a line can
    /// come after the metric or the answer that follows the same event.
    pub async fn log_when(&self, ready: impl Fn(&str) -> bool, seconds: u64) -> String {
        for _ in 0..seconds * 20 {
            let log = self.log();
            if ready(&log) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the log never got there:\n{}", self.log());
    }

    /// Waits for /readyz (keys loaded, upstream healthy, client listeners bound); fails with
    /// the log otherwise. Polled often, so that the first "ready" comes as early as it can: at
    /// that moment the HTTPS and HTTP listeners must already accept, which every test's start
    /// checks (Pingora binds each listener in its own service thread, after the admin one could
    /// answer).
    pub async fn wait_ready(&mut self) {
        let plain = plain_client();
        for _ in 0..1500 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("gateway exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = plain.get(self.admin_url("/readyz")).send().await
                && r.status() == 200
            {
                let listening = [
                    ("http", self.http, true),
                    ("https", self.https, self.https_on),
                ];
                for (name, port, on) in listening {
                    let accepted = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
                    assert!(
                        !on || accepted.is_ok(),
                        "/readyz said ready before the {name} listener accepted: {accepted:?}"
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway not ready:\n{}", self.log());
    }

    pub fn https_client(&self, http2_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none());
        // The development CA, when the configuration uses self-signed certificates.
        if let Ok(ca) = std::fs::read(self.dir.join("certs/ca.pem")) {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        }
        if http2_only {
            b = b.http2_prior_knowledge();
        } else {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut r = self.client.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        Resp::from(r.send().await.expect("request")).await
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Resp {
        Resp::from(r.send().await.expect("request")).await
    }

    /// The sum of the admin `/metrics` samples whose line starts with `series` (a metric
    /// name, or a name with its labels).
    pub async fn metric(&self, series: &str) -> f64 {
        self.admin("/metrics")
            .await
            .text
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits up to `seconds` for `metric(series)` to reach `at_least`; fails with the log.
    pub async fn wait_metric(&self, series: &str, at_least: f64, seconds: u64) {
        for _ in 0..seconds * 10 {
            if self.metric(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{series} stayed below {at_least}:\n{}", self.log());
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// `GET path` on the admin listener.
    pub async fn admin(&self, path: &str) -> Resp {
        self.send(plain_client().get(self.admin_url(path))).await
    }

    /// `POST /reload` on the admin listener, without a token.
    pub async fn reload(&self) -> Resp {
        self.send(plain_client().post(self.admin_url("/reload")))
            .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway log ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub use gatehouse_common::testkit::Resp;

/// Sends raw bytes over TLS (for framing attacks no HTTP client will produce) and returns what
/// came back until the server closed or went quiet.
pub async fn raw_tls(gw: &Gateway, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(gw).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A rustls client trusting only the certificates in `roots_pem`.
pub fn rustls_client(roots_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &*roots_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A TLS connection to the gateway's HTTPS listener, trusting its development CA.
pub async fn tls_connect(
    gw: &Gateway,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let ca = std::fs::read(gw.dir.join("certs/ca.pem")).unwrap();
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&ca));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.https))
        .await
        .unwrap_or_else(|e| panic!("connect to the gateway on :{}: {e}\n{}", gw.https, gw.log()));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}
