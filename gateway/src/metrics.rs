//! Prometheus metrics of the gateway, served on the admin listener at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub rejections: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub jwks_refreshes: IntCounterVec,
    pub reloads: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub connections_rejected: IntCounterVec,
    pub certificate_expiry: IntGaugeVec,
    pub acme_attempts: IntCounterVec,
    pub acme_failures: IntCounterVec,
    pub acme_last_success: IntGaugeVec,
    pub acme_http01_requests: IntCounterVec,
    pub acme_challenge_reads: IntCounter,
    pub rate_limit_store_errors: IntCounterVec,
    /// Synced from the log writer when the metrics are read.
    log_lines_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("gatehouse_gateway".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "Requests by route and status."),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request to response end.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "rejections_total",
                "Requests answered at the edge, by reason.",
            ),
            &["reason"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests refused with 429, by the limit that fired (also in rejections_total{reason=\"rate_limited\"}).",
            ),
            &["limit"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failures talking to upstreams, by upstream and kind.",
            ),
            &["upstream", "kind"],
        )?;
        let upstream_healthy = IntGaugeVec::new(
            Opts::new("upstream_healthy_targets", "Healthy targets per upstream."),
            &["upstream"],
        )?;
        let jwks_refreshes = IntCounterVec::new(
            Opts::new("jwks_refreshes_total", "JWKS fetches by outcome."),
            &["outcome"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("reloads_total", "Configuration reloads by outcome."),
            &["outcome"],
        )?;
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "connections_active",
                "Open client connections per listener.",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "connections_rejected_total",
                "Client connections refused or closed by a limit (max_connections, max_connections_per_client, header_timeout).",
            ),
            &["listener", "reason"],
        )?;
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "certificate_expiry_seconds",
                "Unix time at which the certificate served for a name expires (ACME).",
            ),
            &["name"],
        )?;
        let acme_attempts = IntCounterVec::new(
            Opts::new(
                "acme_renewal_attempts_total",
                "ACME orders started (first issuance and renewals), by name.",
            ),
            &["name"],
        )?;
        let acme_failures = IntCounterVec::new(
            Opts::new(
                "acme_renewal_failures_total",
                "Failed ACME orders and storage errors, by name and reason.",
            ),
            &["name", "reason"],
        )?;
        let acme_last_success = IntGaugeVec::new(
            Opts::new(
                "acme_last_success_timestamp_seconds",
                "Unix time of the last certificate issued for a name.",
            ),
            &["name"],
        )?;
        let acme_http01_requests = IntCounterVec::new(
            Opts::new(
                "acme_http01_requests_total",
                "Requests under /.well-known/acme-challenge/, by outcome (answered, unknown, malformed); answered from memory.",
            ),
            &["outcome"],
        )?;
        let acme_challenge_reads = IntCounter::new(
            "acme_challenge_storage_reads_total",
            "Reads of the HTTP-01 answers from shared storage (on a change notification or every 5 s; never per request).",
        )?;
        let rate_limit_store_errors = IntCounterVec::new(
            Opts::new(
                "rate_limit_store_errors_total",
                "Redis rate-limit checks that failed or timed out (the local bucket decided), by limit.",
            ),
            &["limit"],
        )?;
        let log_lines_dropped = IntCounter::new(
            "log_lines_dropped_total",
            "Log lines (access lines included) dropped because the log writer was too far behind stdout.",
        )?;
        for c in [
            &rate_limit_store_errors,
            &acme_attempts,
            &acme_failures,
            &acme_http01_requests,
            &requests,
            &connections_rejected,
            &rejections,
            &rate_limited,
            &upstream_errors,
            &jwks_refreshes,
            &reloads,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        registry.register(Box::new(acme_last_success.clone()))?;
        registry.register(Box::new(acme_challenge_reads.clone()))?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            rejections,
            rate_limited,
            upstream_errors,
            upstream_healthy,
            jwks_refreshes,
            reloads,
            connections_active,
            connections_rejected,
            certificate_expiry,
            acme_attempts,
            acme_failures,
            acme_last_success,
            acme_http01_requests,
            acme_challenge_reads,
            rate_limit_store_errors,
            log_lines_dropped,
        })
    }

    /// Counts a refusal by its reason and, for a 429, by the limit that fired.
    pub fn reject(&self, reason: &str, limit: Option<&str>) {
        self.rejections.with_label_values(&[reason]).inc();
        if let Some(limit) = limit {
            self.rate_limited.with_label_values(&[limit]).inc();
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let dropped = gatehouse_common::telemetry::dropped_log_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The `route` label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The status as a metric label, without allocating.
fn status_label(status: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600).map(|n| n.to_string()).collect());
    labels.get(status as usize).map_or("other", String::as_str)
}

/// One route's request series (`http_requests_total`, `http_request_duration_seconds`), found
/// once per configuration: a request counts itself without hashing its label values. The
/// counter of each status is looked up the first time that status is answered.
pub struct RouteMetrics {
    route: String,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    latency: Histogram,
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, route: &str) -> Self {
        Self {
            route: route.to_string(),
            requests: metrics.requests.clone(),
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            latency: metrics.latency.with_label_values(&[route]),
        }
    }

    pub fn observe(&self, status: u16, elapsed: Duration) {
        let counter = |status: u16| {
            self.requests
                .with_label_values(&[self.route.as_str(), status_label(status)])
        };
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot.get_or_init(|| counter(status)).inc(),
            None => counter(status).inc(),
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}
