//! Typed settings of the core API: `config/core-api.toml` + `config/core-api.<env>.toml`,
//! `${VAR}` interpolation, `PORT` for PaaS, and one `validate()` pass that reports every
//! problem with its file, key and line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gatehouse_common::config::{self, ConfigError, Environment, Loaded};
use gatehouse_common::telemetry::LogSettings;
use secrecy::SecretString;
use serde::Deserialize;

/// Where the gateway can be when the API is deployed as intended (never public, reached only
/// from the gateway over loopback or a private network: compose, Kubernetes, Fly 6PN,
/// Railway/Render private networking).
pub const DEFAULT_TRUSTED_PROXIES: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// Lowest bcrypt cost ever accepted (docs/security.md).
pub const MIN_BCRYPT_COST: u32 = 10;
/// Lowest bcrypt cost accepted when `auth.insecure_test_bcrypt` is set: only the test suite
/// does that, to keep hundreds of registrations fast. Refused outside development.
pub const TEST_BCRYPT_COST: u32 = 4;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address; the `PORT` environment variable (PaaS convention) replaces the port and
    /// binds all interfaces.
    pub listen: String,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace_seconds: u64,
    /// Whole-request deadline for a handler.
    pub request_timeout_seconds: u64,
    /// Serve `/metrics` (the gateway does not route it publicly).
    pub metrics: bool,
    /// Peers (IPs or CIDRs, an entry may be a comma list) whose `X-Forwarded-For` names the
    /// client: the gateway. Used to tell clients apart for login throttling.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8000".into(),
            body_limit_bytes: 64 * 1024,
            shutdown_grace_seconds: 20,
            request_timeout_seconds: 30,
            metrics: true,
            trusted_proxies: DEFAULT_TRUSTED_PROXIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// How statements reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatementMode {
    /// Named statements prepared once per connection and reused (direct connections).
    #[default]
    Cached,
    /// Unnamed statements sent with their parameter types in one round trip: nothing
    /// outlives a transaction, as transaction-mode poolers (Neon pooled endpoint, PgBouncer)
    /// require.
    Unnamed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// libpq-style URL; `sslmode` = disable | prefer | require | verify-ca | verify-full,
    /// `sslrootcert` = CA file for the verify modes.
    pub url: SecretString,
    pub pool_size: usize,
    /// Open all pool connections at start-up instead of on first use.
    pub open_at_startup: bool,
    /// Longest wait for a free connection before answering 503.
    pub acquire_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_mode: StatementMode,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from(String::new()),
            pool_size: 16,
            open_at_startup: true,
            acquire_timeout_ms: 2_000,
            connect_timeout_ms: 3_000,
            statement_mode: StatementMode::Cached,
            migrate_on_start: false,
        }
    }
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Signing algorithms the API can issue with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SigningAlgorithm {
    #[default]
    EdDSA,
    ES256,
    RS256,
    HS256,
}

impl SigningAlgorithm {
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

/// A previous public key kept for verification (and in the JWKS) during a rotation overlap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub algorithm: SigningAlgorithm,
    /// PEM (SPKI) public key.
    pub public_key: String,
    /// Defaults to the RFC 7638 thumbprint.
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_seconds: u64,
    pub refresh_ttl_seconds: u64,
    /// Absolute lifetime of a login (refresh family), however often it is refreshed.
    pub refresh_family_ttl_seconds: u64,
    pub leeway_seconds: u64,
    pub algorithm: SigningAlgorithm,
    /// PEM private key (PKCS#8), or the HS256 secret. Usually `${JWT_SIGNING_KEY}`, which
    /// also reads `JWT_SIGNING_KEY_FILE`. Empty in development means an ephemeral key.
    pub signing_key: SecretString,
    /// Defaults to the RFC 7638 thumbprint of the public key.
    pub signing_kid: Option<String>,
    pub previous_keys: Vec<PreviousKey>,
    /// HS256 must be opted into explicitly (docs/security.md).
    pub allow_hs256: bool,
    pub bcrypt_cost: u32,
    /// Concurrent bcrypt computations; 0 = one less than the CPU count (at least 1), so a
    /// login flood leaves a core for everything else.
    pub hash_concurrency: usize,
    /// How long a request waits for a hashing slot before 503.
    pub hash_queue_timeout_ms: u64,
    /// Nice value of the hashing threads (0–19; 0 = the process's own priority), so that a
    /// login flood yields the CPU to every other request (`auth/password.rs`).
    pub hash_nice: i32,
    /// Failed sign-ins per account from one client (an IPv4 address or an IPv6 /64) per
    /// minute; the next attempt from that client gets 429. Other clients are not affected.
    pub login_attempts_per_minute: u32,
    /// Failed sign-ins per account from all clients per hour; past it only clients that signed
    /// in to the account successfully in the last 30 days may try (no lockout of the owner).
    pub login_account_failures_per_hour: u32,
    pub token_cache_capacity: usize,
    /// Test-suite switch that allows bcrypt cost 4; refused outside development.
    pub insecure_test_bcrypt: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: "https://localhost:8443".into(),
            audience: "gatehouse-api".into(),
            access_ttl_seconds: 15 * 60,
            refresh_ttl_seconds: 30 * 24 * 3600,
            refresh_family_ttl_seconds: 90 * 24 * 3600,
            leeway_seconds: 5,
            algorithm: SigningAlgorithm::EdDSA,
            signing_key: SecretString::from(String::new()),
            signing_kid: None,
            previous_keys: Vec::new(),
            allow_hs256: false,
            bcrypt_cost: 12,
            hash_concurrency: 0,
            hash_queue_timeout_ms: 5_000,
            hash_nice: crate::auth::password::DEFAULT_HASH_NICE,
            login_attempts_per_minute: 10,
            login_account_failures_per_hour: 100,
            token_cache_capacity: 10_000,
            insecure_test_bcrypt: false,
        }
    }
}

/// Settings plus where they came from.
pub type Config = config::Config<Settings>;

/// Loads `base` (and its overlay for `env`), applies `PORT`, and validates.
pub fn load(base: &Path, env: Environment) -> Result<Config, ConfigError> {
    let port = std::env::var("PORT").ok();
    config::load_checked(base, env, |loaded: &mut Loaded<Settings>, env| {
        let mut errors = Vec::new();
        if let Some(port) = port.as_deref().filter(|p| !p.is_empty()) {
            match port.parse::<u16>() {
                Ok(p) => loaded.value.server.listen = format!("0.0.0.0:{p}"),
                Err(_) => errors.push(format!("PORT={port:?} is not a port number")),
            }
        }
        errors.extend(validate(loaded, env));
        errors
    })
}

/// Every problem at once, each with file/key/line.
fn validate(loaded: &Loaded<Settings>, env: Environment) -> Vec<String> {
    use secrecy::ExposeSecret;
    let s = &loaded.value;
    let mut errs = Vec::new();
    let mut bad = |key: &str, msg: String| errs.push(format!("{}: {msg}", loaded.locate(key)));

    if s.server.listen.parse::<SocketAddr>().is_err() {
        bad(
            "server.listen",
            format!(
                "{:?} is not an address like 127.0.0.1:8000",
                s.server.listen
            ),
        );
    }
    if s.server.body_limit_bytes < 1024 {
        bad("server.body_limit_bytes", "must be at least 1024".into());
    }
    if let Err(e) = crate::client::TrustedProxies::parse(&s.server.trusted_proxies) {
        bad("server.trusted_proxies", e);
    }
    if s.server.request_timeout_seconds == 0 {
        bad(
            "server.request_timeout_seconds",
            "must be at least 1".into(),
        );
    }

    let url = s.database.url.expose_secret();
    if url.is_empty() {
        bad(
            "database.url",
            "is empty: set DATABASE_URL (or DATABASE_URL_FILE)".into(),
        );
    } else if let Err(e) = gatehouse_common::pg::ConnectOptions::parse(url) {
        bad("database.url", e);
    }
    if s.database.pool_size < 1 {
        bad("database.pool_size", "must be at least 1".into());
    }
    if s.database.acquire_timeout_ms == 0 || s.database.connect_timeout_ms == 0 {
        bad(
            "database.acquire_timeout_ms",
            "timeouts must be positive".into(),
        );
    }

    let a = &s.auth;
    if a.issuer.is_empty() {
        bad("auth.issuer", "must not be empty".into());
    }
    if a.audience.is_empty() {
        bad("auth.audience", "must not be empty".into());
    }
    if a.access_ttl_seconds < 60 || a.access_ttl_seconds > 24 * 3600 {
        bad(
            "auth.access_ttl_seconds",
            "must be between 60 and 86400".into(),
        );
    }
    if a.refresh_ttl_seconds < a.access_ttl_seconds {
        bad(
            "auth.refresh_ttl_seconds",
            "must not be shorter than access_ttl_seconds".into(),
        );
    }
    if a.refresh_family_ttl_seconds < a.refresh_ttl_seconds {
        bad(
            "auth.refresh_family_ttl_seconds",
            "must not be shorter than refresh_ttl_seconds".into(),
        );
    }
    if a.leeway_seconds > gatehouse_common::jwt::MAX_LEEWAY_SECS {
        bad("auth.leeway_seconds", "must be at most 30".into());
    }
    if a.algorithm == SigningAlgorithm::HS256 && !a.allow_hs256 {
        bad(
            "auth.algorithm",
            "HS256 needs allow_hs256 = true (shared secrets are discouraged)".into(),
        );
    }
    let key = a.signing_key.expose_secret();
    if key.is_empty() && env != Environment::Development {
        bad(
            "auth.signing_key",
            format!(
                "is empty: set JWT_SIGNING_KEY or JWT_SIGNING_KEY_FILE ({env} needs a persistent key)"
            ),
        );
    }
    if a.algorithm == SigningAlgorithm::HS256 && !key.is_empty() && key.len() < 32 {
        bad(
            "auth.signing_key",
            "an HS256 secret must be at least 32 bytes".into(),
        );
    }
    let min_cost = if a.insecure_test_bcrypt {
        TEST_BCRYPT_COST
    } else {
        MIN_BCRYPT_COST
    };
    if a.insecure_test_bcrypt && env != Environment::Development {
        bad(
            "auth.insecure_test_bcrypt",
            "is only allowed in development".into(),
        );
    }
    if a.bcrypt_cost < min_cost || a.bcrypt_cost > 16 {
        bad(
            "auth.bcrypt_cost",
            format!("must be between {min_cost} and 16"),
        );
    }
    if !(0..=19).contains(&a.hash_nice) {
        bad("auth.hash_nice", "must be between 0 and 19".into());
    }
    if a.login_attempts_per_minute == 0 {
        bad(
            "auth.login_attempts_per_minute",
            "must be at least 1".into(),
        );
    }
    if a.login_account_failures_per_hour < a.login_attempts_per_minute {
        bad(
            "auth.login_account_failures_per_hour",
            "must be at least login_attempts_per_minute".into(),
        );
    }
    for (i, k) in a.previous_keys.iter().enumerate() {
        if k.algorithm == SigningAlgorithm::HS256 {
            bad(
                &format!("auth.previous_keys.{i}"),
                "HS256 keys cannot be published".into(),
            );
        }
    }
    if s.log.level.trim().is_empty() {
        bad("log.level", "must not be empty (e.g. \"info\")".into());
    }
    errs
}

impl Settings {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8000)))
    }
}
