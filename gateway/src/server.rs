//! Assembling the Pingora server from a compiled configuration, one builder per service: the
//! HTTPS proxy (rustls, h2 + http/1.1, swappable certificates), the plain-HTTP listener (308 to
//! https, or the proxy behind a platform), the loopback admin listener and the metrics one, the
//! ACME manager and the housekeeping task (JWKS refresh, upstream health loops and name
//! lookups, rate-limit pruning, SIGHUP reloads). Reloads compile the files again and swap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpServerApp, HttpServerOptions};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::ServiceWithDependents;
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::acme::{Acme, CHALLENGE_PREFIX};
use crate::compile::Compiled;
use crate::conn::{self, Guarded};
use crate::metrics::{Metrics, RouteMetrics, UNMATCHED};
use crate::proxy::Gateway;
use crate::reload::Shared;
use crate::runtime::Runtime;
use crate::settings::{Config, HttpMode, Settings};
use crate::tls::Resolver;

/// How often host-name upstream targets are looked up again.
const RESOLVE_EVERY_SECONDS: u64 = 15;

/// Where the graceful-upgrade socket lives unless `GATEWAY_UPGRADE_SOCK` says otherwise.
const UPGRADE_SOCK: &str = "/tmp/gatehouse-gateway-upgrade.sock";

/// Serves `compiled` (from `config`) until SIGTERM (graceful) or SIGQUIT (graceful upgrade
/// hand-over). `upgrade` takes the listening sockets over from a running old process.
pub fn run(
    config: Config,
    compiled: Compiled,
    metrics: Arc<Metrics>,
    upgrade: bool,
) -> anyhow::Result<()> {
    let s = config.settings();
    if !upgrade {
        check_addresses_free(s)?;
    }
    let mut server = pingora_server(s, upgrade);
    server.bootstrap();

    let runtime = Arc::new(ArcSwap::from_pointee(compiled.runtime));
    let resolver = Arc::new(Resolver::new(compiled.certs));
    let acme = Acme::new(resolver.clone(), metrics.clone());
    let gateway = Gateway {
        runtime: runtime.clone(),
        metrics: metrics.clone(),
        acme: acme.clone(),
        unmatched: Arc::new(RouteMetrics::new(&metrics, UNMATCHED)),
    };
    let listeners = Listeners::new(s, &runtime, &metrics);

    if s.listen.https_enabled() {
        let tls = crate::tls::server_config(resolver.clone()).map_err(anyhow::Error::msg)?;
        server.add_service(https_service(&server, &listeners, gateway.clone(), tls));
    }
    server.add_boxed_service(http_service(&server, &listeners, gateway, acme.clone()));
    let shared = Arc::new(Shared {
        runtime: runtime.clone(),
        resolver: resolver.clone(),
        metrics: metrics.clone(),
        base: config.files().first().cloned().unwrap_or_default(),
        env: config.env,
        reloading: tokio::sync::Mutex::new(()),
        listeners_bound: listeners.data_bound(),
    });
    server.add_service(admin_service(&listeners, shared.clone()));
    if let Some(metrics_only) = metrics_service(&listeners, shared.clone()) {
        server.add_service(metrics_only);
    }
    server.add_service(background_service("acme", AcmeService { acme, runtime }));
    server.add_service(background_service("housekeeping", Housekeeping { shared }));

    tracing::info!(https = %s.listen.https, http = %s.listen.http, admin = %s.listen.admin, env = %config.env, "gateway starting");
    // `run`, not `run_forever` (which exits the process): `main` returns and the log writer
    // gets to write what is still buffered.
    server.run(RunArgs::default());
    Ok(())
}

/// Pingora binds inside its service tasks, and a failed bind there only ends that service:
/// every address is tried first so a taken port stops start-up with its name.
fn check_addresses_free(s: &Settings) -> anyhow::Result<()> {
    for (key, addr) in [
        ("listen.https", &s.listen.https),
        ("listen.http", &s.listen.http),
        ("listen.admin", &s.listen.admin),
        ("listen.metrics", &s.listen.metrics),
    ] {
        if addr.is_empty() {
            continue;
        }
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("{key} = {addr}: {e}"))?;
    }
    Ok(())
}

/// The Pingora server: threads, upstream pool, grace period, upgrade socket and pid file.
fn pingora_server(s: &Settings, upgrade: bool) -> Server {
    let conf = ServerConf {
        threads: s.server.threads,
        upstream_keepalive_pool_size: s.server.upstream_keepalive_pool,
        grace_period_seconds: Some(s.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.server.grace_period_seconds),
        upgrade_sock: std::env::var("GATEWAY_UPGRADE_SOCK").unwrap_or_else(|_| UPGRADE_SOCK.into()),
        pid_file: std::env::var("GATEWAY_PID_FILE")
            .unwrap_or_else(|_| "/tmp/gatehouse-gateway.pid".into()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    Server::new_with_opt_and_conf(opt, conf)
}

/// What every listener shares: addresses, read buffers and connection limits.
struct Listeners<'a> {
    settings: &'a Settings,
    exempt: conn::Exempt,
    metrics: Arc<Metrics>,
    /// The client-facing listeners' "bound" flags, for `/readyz`.
    data_bound: BoundFlags,
}

/// Each client-facing listener's name and whether it is bound yet.
type BoundFlags = Arc<std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>>;

impl<'a> Listeners<'a> {
    fn new(
        settings: &'a Settings,
        runtime: &Arc<ArcSwap<Runtime>>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        // Trusted proxies carry many clients each: not counted per client. Read at every
        // accept, so a reload of `server.trusted_proxies` applies at once.
        let exempt: conn::Exempt = {
            let runtime = runtime.clone();
            Arc::new(move |ip| runtime.load().trusted.trusts(ip))
        };
        Self {
            settings,
            exempt,
            metrics: metrics.clone(),
            data_bound: BoundFlags::default(),
        }
    }

    fn listener(&self, name: &'static str, addr: &str) -> Listener {
        Listener {
            name,
            addr: addr.to_string(),
            // Pingora's default 64 KiB read buffer per connection stays resident
            // (zero-filled); a TLS record is at most 16 KiB, so that is all a client
            // connection needs. TLS itself is done by `Guarded` (conn.rs): every listener is
            // plain TCP.
            buffers: L4BufferSettings {
                read: Some(self.settings.server.read_buffer_bytes),
                write: None,
            },
            limits: conn::Limits::new(
                name,
                &self.settings.server,
                self.exempt.clone(),
                &self.metrics,
            ),
            data_bound: matches!(name, "https" | "http").then(|| self.data_bound.clone()),
        }
    }

    /// The client-facing listeners' flags, once their services are built.
    fn data_bound(&self) -> Vec<(&'static str, Arc<AtomicBool>)> {
        self.data_bound
            .lock()
            .map(|flags| flags.clone())
            .unwrap_or_default()
    }
}

/// `listen.https`: the proxy over TLS (h2 and HTTP/1.1, certificates from the resolver).
fn https_service(
    server: &Server,
    listeners: &Listeners,
    gateway: Gateway,
    tls: Arc<rustls::ServerConfig>,
) -> impl pingora::services::Service + 'static {
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    // An HTTP/2 connection with no open stream is idle: closed after the keep-alive
    // timeout, like an idle HTTP/1.1 connection (Pingora's default keeps it forever).
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(Duration::from_secs(
        listeners.settings.server.keepalive_timeout_seconds,
    ));
    proxy.server_options = Some(options);
    listeners
        .listener("https", &listeners.settings.listen.https)
        .serve(proxy, Some(tls))
}

/// `listen.http`: ACME HTTP-01 answers and a 308 to HTTPS (`redirect`), or the whole proxy
/// without TLS behind a platform's terminator (`proxy`).
fn http_service(
    server: &Server,
    listeners: &Listeners,
    gateway: Gateway,
    acme: Arc<Acme>,
) -> Box<dyn ServiceWithDependents> {
    let s = listeners.settings;
    let http = listeners.listener("http", &s.listen.http);
    match s.listen.http_mode {
        HttpMode::Redirect => {
            let https_port = s
                .listen
                .https
                .parse::<std::net::SocketAddr>()
                .map(|a| a.port())
                .unwrap_or(443);
            let redirect = Redirect { https_port, acme };
            Box::new(http.serve(conn::HeaderMarked(redirect), None))
        }
        HttpMode::Proxy => {
            let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
            Box::new(http.serve(proxy, None))
        }
    }
}

/// `listen.admin` (loopback): metrics, health, readiness and `POST /reload`.
fn admin_service(
    listeners: &Listeners,
    shared: Arc<Shared>,
) -> impl pingora::services::Service + 'static {
    let admin = Admin {
        shared,
        read_only: false,
    };
    listeners
        .listener("admin", &listeners.settings.listen.admin)
        .serve(conn::HeaderMarked(admin), None)
}

/// `listen.metrics`: the admin listener without `/reload`, reachable by Prometheus and
/// orchestrator probes (pod IP); none when the address is empty.
fn metrics_service(
    listeners: &Listeners,
    shared: Arc<Shared>,
) -> Option<impl pingora::services::Service + 'static> {
    let addr = &listeners.settings.listen.metrics;
    if addr.is_empty() {
        return None;
    }
    let metrics_only = Admin {
        shared,
        read_only: true,
    };
    Some(
        listeners
            .listener("metrics", addr)
            .serve(conn::HeaderMarked(metrics_only), None),
    )
}

/// One client-facing listener: its address and its connection limits.
struct Listener {
    name: &'static str,
    addr: String,
    buffers: L4BufferSettings,
    limits: Arc<conn::Limits>,
    /// Where a client-facing listener registers its "bound" flag (none for admin listeners).
    data_bound: Option<BoundFlags>,
}

impl Listener {
    /// `app` behind the connection caps (the filter refuses at accept, before a task or any
    /// TLS work) and the header deadlines (`Guarded`), with TLS when `tls` is given.
    fn serve<A: HttpServerApp + Send + Sync + 'static>(
        self,
        app: A,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Service<Guarded<A>> {
        let mut service = Service::new(
            format!("gateway {}", self.name),
            Guarded::new(app, self.limits.clone(), tls),
        );
        service.add_listener(ListenerConfig::tcp(&self.addr).l4_buffer(self.buffers));
        service.set_connection_filter(self.limits);
        if let Some(Ok(mut flags)) = self.data_bound.as_ref().map(|f| f.lock()) {
            flags.push((self.name, service.bound()));
        }
        service
    }
}

/// `:80`: ACME HTTP-01 answers and a permanent redirect to HTTPS for everything else.
struct Redirect {
    https_port: u16,
    acme: Arc<Acme>,
}

/// Runs the ACME manager (idle unless `tls.source = "acme"`).
struct AcmeService {
    acme: Arc<Acme>,
    runtime: Arc<ArcSwap<Runtime>>,
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let runtime = self.runtime.clone();
        self.acme
            .clone()
            .run(move || runtime.load().settings.tls.clone(), shutdown)
            .await;
    }
}

fn plain(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Redirect {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path().starts_with(CHALLENGE_PREFIX) {
            return match self.acme.http01(req.uri.path()) {
                Some(answer) => plain(200, "application/octet-stream", answer.into_bytes()),
                None => plain(404, "text/plain", b"no such challenge\n".to_vec()),
            };
        }
        let host = req
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.rsplit_once(':').map_or(h, |(name, port)| {
                    if port.chars().all(|c| c.is_ascii_digit()) {
                        name
                    } else {
                        h
                    }
                })
            });
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return plain(400, "text/plain", b"a Host header is required\n".to_vec());
        };
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        Response::builder()
            .status(308)
            .header("location", format!("https://{host}{port}{target}"))
            .header("content-length", "0")
            .body(Vec::new())
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// Loopback admin: `/metrics`, `/healthz` (the process runs), `/readyz` (keys loaded, every
/// upstream has a healthy target, the HTTPS and HTTP listeners bound), `POST /reload`; who may
/// ask is `admin.rs`'s decision.
struct Admin {
    shared: Arc<Shared>,
    /// The `listen.metrics` listener: no `/reload`.
    read_only: bool,
}

/// A problem+json answer of the admin listeners.
/// A problem+json answer of the admin listeners, with a request id in the body and the
/// `X-Request-Id` header like every other error (the id is also in the log line).
fn admin_error(
    request_id: &str,
    status: u16,
    kind: &'static str,
    title: &'static str,
    detail: String,
) -> Response<Vec<u8>> {
    let body = gatehouse_common::problem::Problem::new(status, kind, title)
        .detail(detail)
        .request_id(request_id)
        .to_bytes();
    let mut resp = plain(status, gatehouse_common::problem::CONTENT_TYPE, body);
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        resp.headers_mut()
            .insert(gatehouse_common::request_id::HEADER, v);
    }
    resp
}

fn admin_problem(request_id: &str, refusal: &crate::admin::Refusal) -> Response<Vec<u8>> {
    let (status, kind, title, detail) = refusal.problem();
    let mut resp = admin_error(request_id, status, kind, title, detail.to_string());
    if status == 401 {
        resp.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
        );
    }
    resp
}

impl Admin {
    /// Host, page-origin and (for `POST /reload`) token checks, before anything is served.
    fn admit(&self, session: &ServerSession, rt: &Runtime) -> Result<(), crate::admin::Refusal> {
        use crate::admin;
        let req = session.req_header();
        let access = &rt.settings.admin;
        if !self.read_only {
            admin::check_host(&req.uri, &req.headers, &access.allowed_hosts)?;
        }
        admin::check_not_from_a_page(&req.headers)?;
        if !self.read_only && req.uri.path() == "/reload" && req.method == http::Method::POST {
            admin::check_reload(&req.headers, &access.token, self.shared.env)?;
        }
        Ok(())
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load_full();
        if let Err(refusal) = self.admit(session, &rt) {
            let request_id = gatehouse_common::request_id::generate();
            tracing::warn!(
                request_id = %request_id,
                listener = if self.read_only { "metrics" } else { "admin" },
                path = %session.req_header().uri.path(),
                refusal = ?refusal,
                "admin request refused"
            );
            return admin_problem(&request_id, &refusal);
        }
        let method = session.req_header().method.clone();
        match session.req_header().uri.path() {
            "/metrics" => plain(
                200,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            "/healthz" => plain(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/reload" if method == http::Method::POST && !self.read_only => {
                match self.shared.reload().await {
                    Ok(()) => plain(
                        200,
                        "application/json",
                        br#"{"status":"reloaded"}"#.to_vec(),
                    ),
                    Err(e) => {
                        let request_id = gatehouse_common::request_id::generate();
                        tracing::warn!(request_id = %request_id, "reload over the admin listener refused");
                        admin_error(
                            &request_id,
                            422,
                            "reload_refused",
                            "Configuration reload refused",
                            e,
                        )
                    }
                }
            }
            "/readyz" => {
                let keys = !rt.jwks.verifier().keys().is_empty();
                let down: Vec<&str> = rt
                    .upstreams
                    .values()
                    .filter(|u| u.healthy_targets() == 0)
                    .map(|u| u.name.as_str())
                    .collect();
                let unbound: Vec<&str> = self
                    .shared
                    .listeners_bound
                    .iter()
                    .filter(|(_, bound)| !bound.load(Ordering::Acquire))
                    .map(|(name, _)| *name)
                    .collect();
                let (status, body) = crate::admin::readiness(keys, &down, &unbound);
                plain(status, "application/json", body)
            }
            _ => plain(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

struct Housekeeping {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let shared = &self.shared;
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload through the admin listener");
                None
            }
        };
        let mut jwks_tick = tokio::time::interval(Duration::from_millis(200));
        let mut chores = tokio::time::interval(Duration::from_secs(1));
        let mut keys_backoff = Duration::from_millis(200);
        let mut next_jwks = tokio::time::Instant::now();
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = jwks_tick.tick() => {
                    let rt = shared.runtime.load_full();
                    for up in rt.upstreams.values() {
                        up.ensure_health_loop();
                    }
                    if tokio::time::Instant::now() >= next_jwks {
                        // Until the first key set arrives, retry with backoff; then refresh on
                        // the configured interval, keeping the last good keys on failure.
                        let loaded = !rt.jwks.verifier().keys().is_empty();
                        match rt.jwks.refresh().await {
                            Ok(n) => {
                                if !loaded {
                                    tracing::info!(keys = n, "JWKS loaded");
                                }
                                keys_backoff = Duration::from_millis(200);
                                next_jwks = tokio::time::Instant::now() + Duration::from_secs(rt.settings.jwt.refresh_seconds.max(1));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, retry_ms = keys_backoff.as_millis() as u64, "JWKS fetch failed; keeping the current keys");
                                next_jwks = tokio::time::Instant::now() + keys_backoff;
                                keys_backoff = (keys_backoff * 2).min(Duration::from_secs(10));
                            }
                        }
                    }
                }
                _ = chores.tick() => {
                    n += 1;
                    let rt = shared.runtime.load_full();
                    for u in rt.upstreams.values() {
                        shared.metrics.upstream_healthy.with_label_values(&[u.name.as_str()]).set(u.healthy_targets() as i64);
                    }
                    if n.is_multiple_of(10) {
                        rt.limits.prune();
                    }
                    if n.is_multiple_of(RESOLVE_EVERY_SECONDS) {
                        shared.follow_upstream_names().await;
                    }
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = shared.reload().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
