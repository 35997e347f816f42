//! Assembling the Pingora server: the HTTPS proxy (rustls, h2 + http/1.1, swappable
//! certificates), the plain-HTTP listener (308 to https), the loopback admin listener, upstream
//! health checks and the housekeeping task (JWKS refresh, rate-limit pruning, health gauges).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use gatehouse_common::jwt::{KeySet, Policy, Verifier};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::jwks::Jwks;
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Runtime, UpstreamRt};
use crate::settings::Config;
use crate::tls::Resolver;

/// Where the graceful-upgrade socket lives unless `GATEWAY_UPGRADE_SOCK` says otherwise.
const UPGRADE_SOCK: &str = "/tmp/gatehouse-gateway-upgrade.sock";

/// Builds every service and runs until SIGTERM (graceful) or SIGQUIT (graceful upgrade
/// hand-over). `upgrade` takes the listening sockets over from a running old process.
pub fn run(config: Config, upgrade: bool) -> anyhow::Result<()> {
    let s = &config.settings;
    let conf = ServerConf {
        threads: s.server.threads,
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
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new()?);
    let algorithms: Vec<jsonwebtoken::Algorithm> = s
        .jwt
        .algorithms
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let verifier = Arc::new(Verifier::new(
        Policy {
            issuer: s.jwt.issuer.clone(),
            audience: s.jwt.audience.clone(),
            algorithms: algorithms.clone(),
            leeway_secs: s.jwt.leeway_seconds,
            cache_capacity: s.jwt.cache_capacity,
        },
        KeySet::default(),
    ));
    let jwks = Arc::new(
        Jwks::new(
            &s.jwt.jwks_url,
            algorithms,
            verifier,
            Duration::from_secs(s.jwt.min_refetch_seconds),
            metrics.clone(),
        )
        .map_err(anyhow::Error::msg)?,
    );

    let mut upstreams = HashMap::new();
    for (name, u) in &s.upstreams {
        let mut lb =
            LoadBalancer::<RoundRobin>::try_from_iter(u.targets.iter().map(String::as_str))?;
        let mut hc = HttpHealthCheck::new("localhost", false);
        let mut req = RequestHeader::build("GET", u.health_path.as_bytes(), None)?;
        req.insert_header("host", "localhost")?;
        hc.req = req;
        hc.consecutive_success = 1;
        hc.consecutive_failure = 2;
        hc.peer_template.options.connection_timeout =
            Some(Duration::from_millis(u.connect_timeout_ms));
        hc.peer_template.options.read_timeout =
            Some(Duration::from_millis(u.connect_timeout_ms.max(1000)));
        lb.set_health_check(Box::new(hc));
        lb.health_check_frequency = Some(Duration::from_millis(u.health_interval_ms));
        let bg = background_service(&format!("health check {name}"), lb);
        let lb = bg.task();
        server.add_service(bg);
        upstreams.insert(
            name.clone(),
            Arc::new(UpstreamRt {
                name: name.clone(),
                lb,
                targets: u.targets.len(),
                connect: Duration::from_millis(u.connect_timeout_ms),
                read: Duration::from_millis(u.read_timeout_ms),
                write: Duration::from_millis(u.write_timeout_ms),
                idle: Duration::from_millis(u.idle_timeout_ms),
            }),
        );
    }
    let runtime = Arc::new(ArcSwap::from_pointee(
        Runtime::compile(s, &upstreams).map_err(anyhow::Error::msg)?,
    ));

    let resolver = Arc::new(Resolver::new(
        crate::tls::load(&s.tls).map_err(anyhow::Error::msg)?,
    ));
    let mut tls = TlsSettings::intermediate("", "")?;
    tls.set_cert_resolver(resolver.clone());
    tls.enable_h2();

    let gateway = Gateway {
        runtime: runtime.clone(),
        jwks: jwks.clone(),
        metrics: metrics.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "gateway https",
    );
    proxy.add_tls_with_settings(&s.listen.https, None, tls);
    server.add_service(proxy);

    let https_port = s
        .listen
        .https
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(443);
    let mut redirect = Service::new("gateway http".to_string(), Redirect { https_port });
    redirect.add_tcp(&s.listen.http);
    server.add_service(redirect);

    let ups: Vec<Arc<UpstreamRt>> = upstreams.values().cloned().collect();
    let mut admin = Service::new(
        "gateway admin".to_string(),
        Admin {
            metrics: metrics.clone(),
            jwks: jwks.clone(),
            upstreams: ups.clone(),
        },
    );
    admin.add_tcp(&s.listen.admin);
    server.add_service(admin);

    server.add_service(background_service(
        "housekeeping",
        Housekeeping {
            jwks,
            runtime,
            metrics,
            upstreams: ups,
            refresh: Duration::from_secs(s.jwt.refresh_seconds.max(1)),
        },
    ));

    tracing::info!(https = %s.listen.https, http = %s.listen.http, admin = %s.listen.admin, env = %config.env, "gateway starting");
    server.run_forever();
}

fn healthy_targets(up: &UpstreamRt) -> usize {
    let backends = up.lb.backends();
    backends
        .get_backend()
        .iter()
        .filter(|b| backends.ready(b))
        .count()
}

/// `:80`: ACME HTTP-01 (later) and a permanent redirect to HTTPS for everything else.
struct Redirect {
    https_port: u16,
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
        if req.uri.path().starts_with("/.well-known/acme-challenge/") {
            return plain(404, "text/plain", b"no such challenge\n".to_vec());
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

/// Loopback admin: `/metrics`, `/healthz` (the process runs), `/readyz` (keys loaded and every
/// upstream has a healthy target).
struct Admin {
    metrics: Arc<Metrics>,
    jwks: Arc<Jwks>,
    upstreams: Vec<Arc<UpstreamRt>>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => plain(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => plain(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let keys = !self.jwks.verifier().keys().is_empty();
                let down: Vec<&str> = self
                    .upstreams
                    .iter()
                    .filter(|u| healthy_targets(u) == 0)
                    .map(|u| u.name.as_str())
                    .collect();
                if keys && down.is_empty() {
                    plain(200, "application/json", br#"{"status":"ready"}"#.to_vec())
                } else {
                    let body = serde_json::json!({"status": "not_ready", "jwks_loaded": keys, "upstreams_down": down});
                    plain(503, "application/json", body.to_string().into_bytes())
                }
            }
            _ => plain(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

struct Housekeeping {
    jwks: Arc<Jwks>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    upstreams: Vec<Arc<UpstreamRt>>,
    refresh: Duration,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // First key set: retry with backoff until the API answers.
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.jwks.refresh().await {
                Ok(n) => {
                    tracing::info!(keys = n, "JWKS loaded");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "JWKS not loaded yet")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        let mut jwks_tick = tokio::time::interval(self.refresh);
        jwks_tick.tick().await;
        let mut chores = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = jwks_tick.tick() => {
                    if let Err(e) = self.jwks.refresh().await {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the current keys");
                    }
                }
                _ = chores.tick() => {
                    n += 1;
                    for u in &self.upstreams {
                        self.metrics.upstream_healthy.with_label_values(&[u.name.as_str()]).set(healthy_targets(u) as i64);
                    }
                    if n.is_multiple_of(10) {
                        self.runtime.load().limits.prune();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
