//! Every metric the origin exports, defined in one place, registered in a per-instance registry
//! (so several origins can live in one test process) and rendered on `GET /metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds, from a cached hit (sub-millisecond) to a deadline (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub connections: IntCounter,
    pub connections_open: IntGauge,
    pub pool_in_use: IntGauge,
    pub pool_idle: IntGauge,
    pub pool_max: IntGauge,
    pub pool_acquires: IntCounter,
    pub pool_waits: IntCounter,
    pub pool_acquire_seconds: HistogramVec,
    pub pool_timeouts: IntCounter,
    pub item_cache: IntCounterVec,
    pub item_cache_entries: IntGauge,
    pub item_cache_bytes: IntGauge,
    pub deadline_exceeded: IntCounterVec,
}

/// A metric definition that cannot register is a programming error caught by every test run.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

#[allow(clippy::expect_used)] // startup invariant: static metric definitions are valid
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition")
}

#[allow(clippy::expect_used)]
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid counter definition")
}

#[allow(clippy::expect_used)]
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid gauge definition")
}

#[allow(clippy::expect_used)]
fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid histogram definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            requests: register(
                &r,
                counter_vec(
                    "origin_http_requests_total",
                    "HTTP requests by route and status code.",
                    &["route", "status"],
                ),
            ),
            request_seconds: register(
                &r,
                histogram_vec(
                    "origin_http_request_duration_seconds",
                    "Time to produce a response, by route.",
                    &["route"],
                ),
            ),
            tls_handshakes: register(
                &r,
                counter_vec(
                    "origin_tls_handshakes_total",
                    "Completed TLS handshakes by kind: full or resumed.",
                    &["kind"],
                ),
            ),
            tls_handshake_failures: register(
                &r,
                counter(
                    "origin_tls_handshake_failures_total",
                    "TLS handshakes that failed or timed out.",
                ),
            ),
            connections: register(
                &r,
                counter("origin_http_connections_total", "Accepted TCP connections."),
            ),
            connections_open: register(
                &r,
                gauge(
                    "origin_http_connections_open",
                    "TCP connections currently open.",
                ),
            ),
            pool_in_use: register(
                &r,
                gauge(
                    "origin_db_pool_connections_in_use",
                    "Database connections checked out of the pool.",
                ),
            ),
            pool_idle: register(
                &r,
                gauge(
                    "origin_db_pool_connections_idle",
                    "Idle database connections in the pool.",
                ),
            ),
            pool_max: register(
                &r,
                gauge(
                    "origin_db_pool_connections_max",
                    "Configured pool size (database.pool.max_connections).",
                ),
            ),
            pool_acquires: register(
                &r,
                counter(
                    "origin_db_pool_acquires_total",
                    "Connections acquired from the pool.",
                ),
            ),
            pool_waits: register(
                &r,
                counter(
                    "origin_db_pool_waits_total",
                    "Acquires that found no idle connection and had to wait or open one.",
                ),
            ),
            pool_acquire_seconds: register(
                &r,
                histogram_vec(
                    "origin_db_pool_acquire_duration_seconds",
                    "Time to acquire a pooled connection, by outcome.",
                    &["outcome"],
                ),
            ),
            pool_timeouts: register(
                &r,
                counter(
                    "origin_db_pool_timeouts_total",
                    "Acquires that gave up (pool acquire_timeout or request deadline).",
                ),
            ),
            item_cache: register(
                &r,
                counter_vec(
                    "origin_item_cache_requests_total",
                    "Product-detail cache lookups by result: hit or miss.",
                    &["result"],
                ),
            ),
            item_cache_entries: register(
                &r,
                gauge(
                    "origin_item_cache_entries",
                    "Entries in the product-detail cache.",
                ),
            ),
            item_cache_bytes: register(
                &r,
                gauge(
                    "origin_item_cache_bytes",
                    "Weighted size (bytes) of the product-detail cache.",
                ),
            ),
            deadline_exceeded: register(
                &r,
                counter_vec(
                    "origin_deadline_exceeded_total",
                    "Requests answered 503 because their deadline passed, by route.",
                    &["route"],
                ),
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%err, "metrics encoding failed");
        }
        out
    }
}
