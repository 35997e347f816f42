//! Building the application (keys, pool, hasher, verifier) and serving it: the accept loop,
//! per-request envelope (request id, deadline, security headers, access log, metrics) and
//! graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::FutureExt as _;
use gatehouse_common::config::Environment;
use gatehouse_common::jwt::{Policy, Verifier};
use gatehouse_common::request_id;
use http::header::{CACHE_CONTROL, HeaderName};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::keys;
use crate::auth::password::Hasher;
use crate::auth::throttle::LoginThrottle;
use crate::client::{Peer, TrustedProxies};
use crate::db::Db;
use crate::error::ApiError;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::routes::{self, Router};
use crate::settings::Config;
use crate::state::{AppState, Ctx};

/// A built application bound to its listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    router: Arc<Router>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let Config { env, settings, .. } = config;
        let keys = keys::load(&settings.auth, env).map_err(anyhow::Error::msg)?;
        if keys.ephemeral {
            tracing::warn!(
                kid = keys.signer.kid(),
                "DEVELOPMENT ONLY: no JWT_SIGNING_KEY set, signing with an ephemeral key; \
                 every restart invalidates all tokens"
            );
        }
        let mut algorithms = vec![settings.auth.algorithm.jwt()];
        algorithms.extend(
            settings
                .auth
                .previous_keys
                .iter()
                .map(|k| k.algorithm.jwt()),
        );
        let verifier = Verifier::new(
            Policy {
                issuer: settings.auth.issuer.clone(),
                audience: settings.auth.audience.clone(),
                algorithms,
                leeway_secs: settings.auth.leeway_seconds,
                cache_capacity: settings.auth.token_cache_capacity,
            },
            keys.verify,
        );
        let concurrency = match settings.auth.hash_concurrency {
            0 => Hasher::default_concurrency(),
            n => n,
        };
        let hasher = tokio::task::spawn_blocking({
            let cost = settings.auth.bcrypt_cost;
            let wait = Duration::from_millis(settings.auth.hash_queue_timeout_ms);
            let nice = settings.auth.hash_nice;
            move || Hasher::new(cost, concurrency, wait, nice)
        })
        .await??;

        let url = settings.database.url.expose_secret().to_string();
        if settings.database.migrate_on_start {
            let report = crate::migrate::run(&url, settings.database.connect_timeout()).await?;
            tracing::info!(applied = report, "migrations applied at start-up");
        }
        let db = Db::new(&settings.database, &url).map_err(anyhow::Error::msg)?;
        if settings.database.open_at_startup {
            match db.open_all().await {
                Ok(n) => tracing::info!(connections = n, "database pool opened"),
                Err(e) => {
                    tracing::warn!(error = %e, "database not reachable at start-up; serving 503 until it is")
                }
            }
        }
        match db.role_bypasses_rls().await {
            Ok(true) if env != Environment::Development => {
                anyhow::bail!(
                    "the database role is a superuser or has BYPASSRLS: row-level security would not \
                     protect tasks; connect as an ordinary role"
                )
            }
            Ok(true) => {
                tracing::warn!("database role bypasses row-level security (development only)")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not check the database role"),
        }

        let login_throttle = LoginThrottle::new(
            settings.auth.login_attempts_per_minute,
            settings.auth.login_account_failures_per_hour,
        );
        let trusted_proxies =
            TrustedProxies::parse(&settings.server.trusted_proxies).map_err(anyhow::Error::msg)?;
        let jwks_body = Bytes::from(serde_json::to_vec(&keys.jwks)?);
        let listener = TcpListener::bind(settings.listen_addr())
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen_addr()))?;
        let state = Arc::new(AppState {
            env,
            settings,
            db,
            verifier,
            hasher,
            metrics: Metrics::new()?,
            jwks_body,
            signer: keys.signer,
            login_throttle,
            trusted_proxies,
        });
        Ok(Self {
            listener,
            state,
            router: Arc::new(routes::router()?),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish
    /// within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            router,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, env = %state.env, "core-api listening");
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Slowloris: the whole header block must arrive within this time.
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        let graceful = GracefulShutdown::new();
        let janitor = tokio::spawn(evict_idle_limiter_keys(state.clone()));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let router = router.clone();
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(Peer(peer));
                        handle(state.clone(), router.clone(), req)
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        janitor.abort();
        let grace = Duration::from_secs(state.settings.server.shutdown_grace_seconds);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        state.db.pool().close();
        Ok(())
    }
}

/// Keeps the login throttle bounded: forget drained buckets and expired known clients.
async fn evict_idle_limiter_keys(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        state.login_throttle.evict();
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Extension methods are folded into one label so clients cannot grow the metric set.
fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static(request_id::HEADER);

/// The per-request envelope around `routes::dispatch`.
async fn handle(
    state: Arc<AppState>,
    router: Arc<Router>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut ctx = Ctx {
        request_id: request_id::accept_or_generate(
            req.headers().get(&X_REQUEST_ID).map(HeaderValue::as_bytes),
        ),
        route: "unmatched",
        user_id: None,
    };
    let method = req.method().clone();
    let deadline = Duration::from_secs(state.settings.server.request_timeout_seconds);
    // Panic boundary: a panic anywhere in a handler becomes a 500 problem for this request
    // only. What the handler held is dropped while unwinding; no database transaction can be
    // left open (`db::Db::scoped` sends each transaction whole, ending in its Sync).
    let handler = AssertUnwindSafe(routes::dispatch(&state, &router, req, &mut ctx)).catch_unwind();
    let result = match tokio::time::timeout(deadline, handler).await {
        Ok(Ok(result)) => result,
        Ok(Err(payload)) => {
            state.metrics.panics.inc();
            Err(ApiError::Internal(format!(
                "handler panicked: {}",
                panic_message(payload.as_ref())
            )))
        }
        Err(_) => Err(ApiError::Timeout),
    };
    let mut resp = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            state
                .metrics
                .server_errors
                .with_label_values(&[e.problem().kind])
                .inc();
        }
        e.into_response(&ctx.request_id)
    });
    let status = resp.status();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(CACHE_CONTROL) {
        // Tokens and per-user data: never stored by caches (RFC 6749 §5.1).
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&[ctx.route, method_label(&method), status.as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[ctx.route])
        .observe(elapsed.as_secs_f64());
    macro_rules! access {
        ($level:ident) => {
            tracing::$level!(
                target: "access",
                request_id = %ctx.request_id,
                method = %method,
                route = ctx.route,
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                user_id = ctx.user_id.map(|u| u.to_string()).unwrap_or_default(),
                "request"
            )
        };
    }
    // Health checks (the gateway probes every second) and scrapes would bury every other
    // line: successful ones are logged at debug.
    if status.is_success() && is_probe(ctx.route) {
        access!(debug);
    } else {
        access!(info);
    }
    Ok(resp)
}

/// Routes polled by machines (health checks, Prometheus).
fn is_probe(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
}
