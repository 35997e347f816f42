//! Typed gateway settings as read from `config/gateway.toml` + `gateway.<env>.toml`: plain
//! serde types with their defaults, nothing checked here. `compile.rs` turns them into the
//! running configuration in one pass that reports every problem with file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatehouse_common::config::{self, ConfigError, Environment, Loaded};
use gatehouse_common::telemetry::LogSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub listen: Listen,
    pub server: Server,
    pub tls: Tls,
    pub jwt: Jwt,
    pub upstreams: BTreeMap<String, Upstream>,
    pub cors: BTreeMap<String, Cors>,
    pub limits: BTreeMap<String, Limit>,
    pub routes: Vec<Route>,
    pub log: LogSettings,
    pub redis: Redis,
    pub admin: AdminAccess,
}

/// `[admin]`: who may use the admin listener besides its loopback address (`admin.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminAccess {
    /// Bearer token `POST /reload` requires (`GATEWAY_ADMIN_TOKEN` / `_FILE`). Empty: none, and
    /// then reload over HTTP works in development only (SIGHUP always works).
    pub token: secrecy::SecretString,
    /// Host names the admin listener answers to, besides `localhost` and loopback address
    /// literals (a request naming any other host is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
}

/// `[redis]`: where limits with `store = "redis"` keep their counters, shared by every
/// gateway instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host:port[/db]` (private network; "" = no Redis).
    pub url: String,
    /// A check slower than this counts as a Redis failure: the local limiter decides instead.
    pub timeout_ms: u64,
}

impl Default for Redis {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitStore {
    /// This process only (each gateway instance has its own buckets).
    #[default]
    Local,
    /// Redis: one bucket across all instances; this process's buckets while Redis fails.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub https: String,
    pub http: String,
    pub admin: String,
    /// What the plain-HTTP listener does besides ACME HTTP-01: `redirect` (308 to https) or
    /// `proxy` (the full gateway without TLS, for platforms that terminate TLS in front of it
    /// — Render, Railway, Fly, a Kubernetes ingress).
    pub http_mode: HttpMode,
    /// `/metrics`, `/healthz`, `/readyz` (no `/reload`) on an address Prometheus and
    /// orchestrator probes can reach, e.g. `0.0.0.0:9091`; "" (default): off.
    pub metrics: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HttpMode {
    #[default]
    Redirect,
    Proxy,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            https: "0.0.0.0:443".into(),
            http: "0.0.0.0:80".into(),
            admin: "127.0.0.1:9090".into(),
            http_mode: HttpMode::Redirect,
            metrics: String::new(),
        }
    }
}

impl Listen {
    /// `listen.https = ""` turns the HTTPS listener off (TLS ends at a platform in front).
    pub fn https_enabled(&self) -> bool {
        !self.https.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub threads: usize,
    pub grace_period_seconds: u64,
    /// An idle client connection — HTTP/1.x between requests, HTTP/2 with no open stream — is
    /// closed after this.
    pub keepalive_timeout_seconds: u64,
    pub max_uri_bytes: usize,
    /// Largest header block (names + values) forwarded; larger gets 431.
    pub max_header_bytes: usize,
    /// Idle upstream connections kept for reuse (all upstreams together). Keep it above the
    /// number of concurrent upstream requests (h2 clients multiplex many streams onto one
    /// downstream connection, each needing its own HTTP/1.1 upstream connection).
    pub upstream_keepalive_pool: usize,
    /// Extra read buffer per client connection, kept while it idles. 0 (the default): none —
    /// rustls and Pingora's HTTP/1 parser read into their own buffers anyway.
    pub read_buffer_bytes: usize,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` and `X-Request-Id` are believed.
    pub trusted_proxies: Vec<String>,
    /// Client connections per listener; more are closed at accept, before any TLS work.
    pub max_connections: usize,
    /// Client connections per listener from one client (an IPv4 address, an IPv6 /64); more
    /// are closed at accept. Trusted proxies are not counted. 0: no per-client cap.
    pub max_connections_per_client: usize,
    /// The TLS handshake must be complete this long after accept, and every request header
    /// this long after its first byte (the first request on a connection, or an HTTP/2
    /// connection preface: after the handshake), else the connection is closed (slowloris).
    pub header_timeout_seconds: u64,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period_seconds: 10,
            keepalive_timeout_seconds: 60,
            max_uri_bytes: 8192,
            max_header_bytes: 16 * 1024,
            upstream_keepalive_pool: 1024,
            read_buffer_bytes: 0,
            trusted_proxies: Vec::new(),
            max_connections: 20_000,
            max_connections_per_client: 256,
            header_timeout_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsSource {
    #[default]
    Files,
    SelfSigned,
    Acme,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 first, HTTP-01 on the next attempt after a failure, and so on.
    #[default]
    Auto,
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeStorage {
    #[default]
    Files,
    Postgres,
}

/// `[tls.acme]`: certificates obtained and renewed by the gateway (RFC 8555).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acme {
    /// The CA's directory URL, e.g. Let's Encrypt staging
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// `mailto:` addresses for the account.
    pub contact: Vec<String>,
    /// One certificate per name, each renewed on its own schedule.
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    pub storage: AcmeStorage,
    /// `files` storage: account, certificates and keys (mode 0600) live here.
    pub dir: String,
    /// `postgres` storage: shared by every gateway instance (libpq URL, sslmode honoured).
    pub database_url: String,
    /// PEM CA certificate that signed the directory's HTTPS certificate, when it is not a
    /// public one (Pebble, a private CA). Empty: the system roots.
    pub ca_file: String,
    /// External account binding, when the CA requires one (key: base64url).
    pub eab_kid: String,
    pub eab_hmac_key: String,
    /// Renew when this fraction of the lifetime remains (1/3: day 60 of a 90-day certificate),
    /// or earlier when the CA's renewal information (ARI) says so.
    pub renew_remaining_fraction: f64,
    /// Failed attempts are retried after this, doubling (with jitter) up to `retry_max_seconds`.
    pub retry_min_seconds: u64,
    pub retry_max_seconds: u64,
    /// How often storage is read again: certificates another instance renewed are picked up.
    pub poll_seconds: u64,
}

impl Default for Acme {
    fn default() -> Self {
        Self {
            directory: String::new(),
            contact: Vec::new(),
            domains: Vec::new(),
            challenge: AcmeChallenge::Auto,
            storage: AcmeStorage::Files,
            dir: "certs/acme".into(),
            database_url: String::new(),
            ca_file: String::new(),
            eab_kid: String::new(),
            eab_hmac_key: String::new(),
            renew_remaining_fraction: 1.0 / 3.0,
            retry_min_seconds: 60,
            retry_max_seconds: 6 * 3600,
            poll_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub source: TlsSource,
    pub certificates: Vec<CertFiles>,
    /// Names for the `self-signed` source (development only).
    pub self_signed_names: Vec<String>,
    /// Where the `self-signed` source writes its certificate.
    pub self_signed_dir: String,
    pub hsts_max_age_seconds: u64,
    pub acme: Acme,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            source: TlsSource::Files,
            certificates: Vec::new(),
            self_signed_names: vec!["localhost".into(), "127.0.0.1".into()],
            self_signed_dir: "certs/dev".into(),
            hsts_max_age_seconds: 31_536_000,
            acme: Acme::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub kid: String,
    pub algorithm: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Jwt {
    /// Empty to rely on `key_files` alone. `https://` URLs are verified against the public
    /// web roots, plus `jwks_ca_file` when set (a private CA in front of the API).
    pub jwks_url: String,
    pub jwks_ca_file: String,
    /// PEM public keys, for deployments that distribute keys as files.
    pub key_files: Vec<KeyFile>,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    pub leeway_seconds: u64,
    pub refresh_seconds: u64,
    /// Least time between the start of a fetch and a fetch triggered by a token the keys
    /// refused (unknown `kid`, or a failed signature under a known one); at least 1.
    pub min_refetch_seconds: u64,
    /// Verified tokens kept, each with its token (a few hundred bytes): what a full cache holds.
    pub cache_capacity: usize,
}

impl Default for Jwt {
    fn default() -> Self {
        Self {
            jwks_url: "http://127.0.0.1:8000/.well-known/jwks.json".into(),
            jwks_ca_file: String::new(),
            key_files: Vec::new(),
            issuer: String::new(),
            audience: "gatehouse-api".into(),
            algorithms: vec!["EdDSA".into()],
            leeway_seconds: 5,
            refresh_seconds: 300,
            min_refetch_seconds: 10,
            cache_capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<String>,
    pub balance: Balance,
    /// A target whose connection failed is skipped for this long (passive ejection), before
    /// the active health check has noticed.
    pub eject_seconds: u64,
    /// This many 5xx answers in a row from one target eject it too (0 = never).
    pub eject_after_5xx: u32,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Whole attempt, from the request's arrival to the last response byte (0 = no limit):
    /// read/write waits are cut to what is left, and a response still streaming when it runs
    /// out is aborted.
    pub total_timeout_ms: u64,
    /// Idle pooled connections are closed after this; keep it below the upstream's own idle
    /// timeout so a reused connection is never one the upstream just closed.
    pub idle_timeout_ms: u64,
    pub health_path: String,
    pub health_interval_ms: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            balance: Balance::RoundRobin,
            eject_seconds: 5,
            eject_after_5xx: 5,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            total_timeout_ms: 60_000,
            idle_timeout_ms: 50_000,
            health_path: "/healthz".into(),
            health_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`) or one-label wildcards
    /// (`https://*.example.com`).
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    pub headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    pub max_age_seconds: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            methods: ["GET", "POST", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            headers: ["authorization", "content-type", "x-request-id"]
                .map(String::from)
                .to_vec(),
            expose_headers: [
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ]
            .map(String::from)
            .to_vec(),
            credentials: false,
            max_age_seconds: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// The client IP (after trusted-proxy resolution).
    #[default]
    Ip,
    /// The verified token subject (routes with `auth = "jwt"` only).
    Subject,
    /// One bucket for everyone using the route.
    Global,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    pub key: LimitKey,
    pub per_second: u32,
    /// Instead of `per_second`, for slow rates (sign-ups, password resets): requests a
    /// minute. 0 (the default) means `per_second` applies.
    pub per_minute: u32,
    pub burst: u32,
    pub store: LimitStore,
    /// `key = "ip"`: IPv6 clients are keyed by their network of this prefix length (default
    /// 64, one subscriber's network); IPv4 by the address.
    pub ipv6_prefix: Option<u8>,
}

impl Default for Limit {
    fn default() -> Self {
        Self {
            key: LimitKey::Ip,
            per_second: 10,
            per_minute: 0,
            burst: 20,
            store: LimitStore::Local,
            ipv6_prefix: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    None,
    Jwt,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    pub prefix: String,
    pub host: Option<String>,
    pub methods: Vec<String>,
    pub upstream: String,
    pub auth: Auth,
    /// e.g. `/api/users/{sub}/`: that path segment must equal the verified `sub`.
    pub path_claim: Option<String>,
    pub cors: Option<String>,
    pub limits: Vec<String>,
    pub body_limit_bytes: Option<usize>,
    /// Overrides the upstream's read/write timeouts for this route.
    pub timeout_ms: Option<u64>,
}

/// The settings as read from the files (not yet checked: `compile.rs` does that) and where each
/// key was set, so every error can name file, line and key.
#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    pub loaded: Loaded<Settings>,
}

impl Config {
    pub fn settings(&self) -> &Settings {
        &self.loaded.value
    }

    /// `file:line: key` of the file that set `key` last.
    pub fn locate(&self, key: &str) -> String {
        self.loaded.locate(key)
    }

    /// The files read, base first (`gateway.toml + gateway.production.toml`).
    pub fn files(&self) -> Vec<PathBuf> {
        self.loaded.files().map(Path::to_path_buf).collect()
    }
}

/// Reads `base` and its overlay for `env`, with `${VAR}` interpolation and unknown keys refused.
pub fn load(base: &Path, env: Environment) -> Result<Config, ConfigError> {
    Ok(Config {
        env,
        loaded: config::load(base, env)?,
    })
}

/// A setting that cannot be used: its dotted key (`upstreams.api.targets.0`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub why: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            why: why.into(),
        }
    }
}

pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
