//! Typed gateway settings (`config/gateway.toml` + `gateway.<env>.toml`) and the one
//! `validate()` pass that reports every problem with file, key and line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

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

/// Settings plus where they came from.
pub type Config = config::Config<Settings>;

pub fn load(base: &Path, env: Environment) -> Result<Config, ConfigError> {
    config::load_checked(base, env, |loaded: &mut Loaded<Settings>, env| {
        validate(loaded, env)
    })
}

pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// `IP:port`, or `host:port` with a DNS name (resolved when the configuration is loaded:
/// at start-up and on every reload).
fn is_target(t: &str) -> bool {
    if t.parse::<SocketAddr>().is_ok() {
        return true;
    }
    t.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok_and(|p| p > 0) && crate::acme::check_domain(host).is_ok()
    })
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

fn validate(loaded: &Loaded<Settings>, env: Environment) -> Vec<String> {
    let s = &loaded.value;
    let mut errs = Vec::new();
    let mut bad = |key: &str, msg: String| errs.push(format!("{}: {msg}", loaded.locate(key)));
    for (key, addr) in [
        ("listen.https", &s.listen.https),
        ("listen.http", &s.listen.http),
        ("listen.admin", &s.listen.admin),
        ("listen.metrics", &s.listen.metrics),
    ] {
        if matches!(key, "listen.https" | "listen.metrics") && addr.is_empty() {
            continue; // off (HTTPS: a platform terminates TLS in front)
        }
        if addr.parse::<SocketAddr>().is_err() {
            bad(key, format!("{addr:?} is not an address like 0.0.0.0:443"));
        }
    }
    if !s.listen.https_enabled() && s.listen.http_mode != HttpMode::Proxy {
        bad(
            "listen.https",
            "with the HTTPS listener off, listen.http_mode must be \"proxy\" (nothing would answer the redirect)".into(),
        );
    }
    if !s.listen.https_enabled() && s.tls.source == TlsSource::Acme {
        bad(
            "tls.source",
            "acme certificates need the HTTPS listener (listen.https)".into(),
        );
    }
    if s.listen
        .admin
        .parse::<SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback())
    {
        bad(
            "listen.admin",
            "the admin listener must be on a loopback address".into(),
        );
    }
    let token = secrecy::ExposeSecret::expose_secret(&s.admin.token);
    if !token.is_empty() && token.chars().count() < crate::admin::MIN_TOKEN_CHARS {
        bad(
            "admin.token",
            format!(
                "must be at least {} characters (e.g. openssl rand -hex 32)",
                crate::admin::MIN_TOKEN_CHARS
            ),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bad(
            "admin.token",
            "must be printable ASCII without spaces (it is sent in an Authorization header)".into(),
        );
    }
    for (i, h) in s.admin.allowed_hosts.iter().enumerate() {
        if crate::acme::check_domain(h.strip_suffix('.').unwrap_or(h)).is_err() {
            bad(
                &format!("admin.allowed_hosts.{i}"),
                format!("{h:?} is not a host name (address literals need no entry)"),
            );
        }
    }
    if s.server.read_buffer_bytes != 0 && s.server.read_buffer_bytes < 4096 {
        bad(
            "server.read_buffer_bytes",
            "must be 0 (none) or at least 4096".into(),
        );
    }
    if s.server.threads == 0 {
        bad("server.threads", "must be at least 1".into());
    }
    if s.server.max_connections == 0 {
        bad("server.max_connections", "must be at least 1".into());
    }
    if s.server.header_timeout_seconds == 0 {
        bad("server.header_timeout_seconds", "must be at least 1".into());
    }
    if s.server.keepalive_timeout_seconds == 0 {
        // Pingora reads 0 as "no timeout": an idle connection would be held forever.
        bad(
            "server.keepalive_timeout_seconds",
            "must be at least 1".into(),
        );
    }
    for (i, entry) in s.server.trusted_proxies.iter().enumerate() {
        for p in crate::client_ip::entries(std::slice::from_ref(entry)) {
            if crate::client_ip::parse_net(p).is_some() {
                continue;
            }
            bad(
                &format!("server.trusted_proxies.{i}"),
                format!("{p:?} is not an IP address or CIDR"),
            );
        }
    }
    match s.tls.source {
        // Without an HTTPS listener no certificate is loaded.
        _ if !s.listen.https_enabled() => {}
        TlsSource::Files if s.tls.certificates.is_empty() => {
            bad(
                "tls.certificates",
                "the files source needs at least one [[tls.certificates]]".into(),
            );
        }
        TlsSource::Acme => {
            let a = &s.tls.acme;
            if !a.directory.starts_with("https://") {
                bad(
                    "tls.acme.directory",
                    "must be the CA's https:// directory URL".into(),
                );
            }
            if a.domains.is_empty() {
                bad("tls.acme.domains", "name at least one domain".into());
            }
            for (i, d) in a.domains.iter().enumerate() {
                if let Err(e) = crate::acme::check_domain(d) {
                    bad(&format!("tls.acme.domains.{i}"), format!("{d:?}: {e}"));
                }
            }
            if a.storage == AcmeStorage::Postgres && a.database_url.is_empty() {
                bad(
                    "tls.acme.database_url",
                    "postgres storage needs a database URL".into(),
                );
            }
            if a.storage == AcmeStorage::Files && a.dir.is_empty() {
                bad("tls.acme.dir", "files storage needs a directory".into());
            }
            if !(a.renew_remaining_fraction > 0.0 && a.renew_remaining_fraction < 1.0) {
                bad(
                    "tls.acme.renew_remaining_fraction",
                    "must be between 0 and 1".into(),
                );
            }
            if a.retry_min_seconds == 0 || a.retry_max_seconds < a.retry_min_seconds {
                bad(
                    "tls.acme.retry_min_seconds",
                    "must be at least 1 and at most retry_max_seconds".into(),
                );
            }
            if a.poll_seconds == 0 {
                bad("tls.acme.poll_seconds", "must be at least 1".into());
            }
            if a.eab_kid.is_empty() != a.eab_hmac_key.is_empty() {
                bad(
                    "tls.acme.eab_kid",
                    "external account binding needs both eab_kid and eab_hmac_key".into(),
                );
            }
        }
        TlsSource::SelfSigned if env != Environment::Development => {
            bad(
                "tls.source",
                format!("self-signed certificates are for development only, not {env}"),
            );
        }
        _ => {}
    }
    if s.jwt.issuer.is_empty() {
        bad("jwt.issuer", "must name the issuer of access tokens".into());
    }
    if s.jwt.audience.is_empty() {
        bad("jwt.audience", "must not be empty".into());
    }
    // 0 would let every request with an unknown kid (anyone can forge one) trigger a fetch.
    if s.jwt.min_refetch_seconds == 0 {
        bad(
            "jwt.min_refetch_seconds",
            "must be at least 1 (tokens naming unknown keys would each trigger a JWKS fetch)"
                .into(),
        );
    }
    if s.jwt.refresh_seconds == 0 {
        bad("jwt.refresh_seconds", "must be at least 1".into());
    }
    if s.jwt.leeway_seconds > gatehouse_common::jwt::MAX_LEEWAY_SECS {
        bad("jwt.leeway_seconds", "must be at most 30".into());
    }
    for (i, a) in s.jwt.algorithms.iter().enumerate() {
        match a.parse::<jsonwebtoken::Algorithm>() {
            Ok(
                jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512,
            ) => bad(
                &format!("jwt.algorithms.{i}"),
                "symmetric algorithms cannot come from a JWKS".into(),
            ),
            Ok(_) => {}
            Err(_) => bad(
                &format!("jwt.algorithms.{i}"),
                format!("{a:?} is not a JWS algorithm"),
            ),
        }
    }
    if s.jwt.jwks_url.is_empty() && s.jwt.key_files.is_empty() {
        bad(
            "jwt.jwks_url",
            "set a JWKS URL or at least one [[jwt.key_files]]".into(),
        );
    } else if !s.jwt.jwks_url.is_empty() && !is_http_url(&s.jwt.jwks_url) {
        bad("jwt.jwks_url", "must be an http:// or https:// URL".into());
    }
    for (name, u) in &s.upstreams {
        if u.targets.is_empty() {
            bad(
                &format!("upstreams.{name}.targets"),
                "needs at least one host:port".into(),
            );
        }
        for (i, t) in u.targets.iter().enumerate() {
            if !is_target(t) {
                bad(
                    &format!("upstreams.{name}.targets.{i}"),
                    format!("{t:?} is not IP:port or host:port"),
                );
            }
        }
    }
    for (name, c) in &s.cors {
        for (i, o) in c.origins.iter().enumerate() {
            if let Err(e) = crate::cors::OriginPattern::parse(o) {
                bad(&format!("cors.{name}.origins.{i}"), e);
            } else if c.credentials && o.contains('*') {
                bad(
                    &format!("cors.{name}.origins.{i}"),
                    "credentials are only allowed with exact origins".into(),
                );
            }
        }
    }
    for (name, l) in &s.limits {
        if l.per_second == 0 || l.burst == 0 {
            bad(
                &format!("limits.{name}"),
                "per_second and burst must be at least 1".into(),
            );
        }
        match l.ipv6_prefix {
            Some(_) if l.key != LimitKey::Ip => bad(
                &format!("limits.{name}.ipv6_prefix"),
                "only limits with key = \"ip\" are keyed by address".into(),
            ),
            // Shorter than /32 puts whole providers into one bucket.
            Some(p) if !(32..=128).contains(&p) => bad(
                &format!("limits.{name}.ipv6_prefix"),
                format!("{p} is not a prefix length between 32 and 128"),
            ),
            _ => {}
        }
        if l.store == LimitStore::Redis && s.redis.url.is_empty() {
            bad(
                &format!("limits.{name}.store"),
                "\"redis\" needs [redis] url".into(),
            );
        }
    }
    if !s.redis.url.is_empty() && !s.redis.url.starts_with("redis://") {
        bad(
            "redis.url",
            "must be a redis://host:port URL (Redis on the private network)".into(),
        );
    }
    if s.routes.is_empty() {
        bad("routes", "at least one [[routes]] is needed".into());
    }
    for (i, r) in s.routes.iter().enumerate() {
        let key = |k: &str| format!("routes.{i}.{k}");
        if !r.prefix.starts_with('/') {
            bad(&key("prefix"), "must start with /".into());
        }
        if !s.upstreams.contains_key(&r.upstream) {
            bad(&key("upstream"), format!("no [upstreams.{}]", r.upstream));
        }
        if let Some(c) = &r.cors
            && !s.cors.contains_key(c)
        {
            bad(&key("cors"), format!("no [cors.{c}]"));
        }
        for l in &r.limits {
            match s.limits.get(l) {
                None => bad(&key("limits"), format!("no [limits.{l}]")),
                Some(limit) if limit.key == LimitKey::Subject && r.auth != Auth::Jwt => bad(
                    &key("limits"),
                    format!("limit {l:?} is keyed by subject but the route has no auth"),
                ),
                Some(_) => {}
            }
        }
        if let Some(pc) = &r.path_claim {
            if r.auth != Auth::Jwt {
                bad(&key("path_claim"), "needs auth = \"jwt\"".into());
            }
            if !pc.contains("{sub}") || !pc.starts_with('/') {
                bad(
                    &key("path_claim"),
                    "must be a path like /api/users/{sub}/".into(),
                );
            }
        }
        for (j, m) in r.methods.iter().enumerate() {
            if m.parse::<http::Method>().is_err() {
                bad(
                    &format!("routes.{i}.methods.{j}"),
                    format!("{m:?} is not an HTTP method"),
                );
            }
        }
    }
    errs
}
