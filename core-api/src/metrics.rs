//! Prometheus metrics of the core API, served at `/metrics`.

use deadpool_postgres::Pool;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub refresh_reuse: IntCounterVec,
    /// 5xx answers by problem type (database_unavailable, overloaded, timeout, internal_error).
    pub server_errors: IntCounterVec,
    /// Requests whose handler panicked (each answered 500 internal_error).
    pub panics: IntCounter,
    /// 1 when `SELECT 1` through the pool answered at the last scrape.
    pub db_up: IntGauge,
    pool: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("gatehouse_api".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Time to answer a request.")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            &["route"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Rejected credentials and tokens, by reason.",
            ),
            &["reason"],
        )?;
        let refresh_reuse = IntCounterVec::new(
            Opts::new(
                "refresh_token_events_total",
                "Refresh-token rotations and reuse detections.",
            ),
            &["event"],
        )?;
        let server_errors = IntCounterVec::new(
            Opts::new(
                "server_errors_total",
                "5xx answers by problem type (database_unavailable, overloaded, timeout, internal_error).",
            ),
            &["type"],
        )?;
        let panics = IntCounter::new(
            "panics_total",
            "Requests whose handler panicked; each was answered 500 internal_error.",
        )?;
        let db_up = IntGauge::new(
            "db_up",
            "1 when SELECT 1 through the pool answered within 1 s at this scrape.",
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database pool: size, available and waiting.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(refresh_reuse.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(server_errors.clone()))?;
        registry.register(Box::new(db_up.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            auth_failures,
            refresh_reuse,
            server_errors,
            panics,
            db_up,
            pool,
        })
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Text exposition, with the pool gauges read at scrape time.
    pub fn render(&self, pool: &Pool) -> Vec<u8> {
        let status = pool.status();
        self.pool
            .with_label_values(&["max"])
            .set(status.max_size as i64);
        self.pool
            .with_label_values(&["size"])
            .set(status.size as i64);
        self.pool
            .with_label_values(&["available"])
            .set(status.available as i64);
        self.pool
            .with_label_values(&["waiting"])
            .set(status.waiting as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
