//! Every metric the proxy exports, defined in one place, in a per-instance registry (several
//! proxies can run in one test process) rendered by the admin listener's `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status (`route="none"` when nothing matched).
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub in_flight: IntGauge,
    /// Upstream connections used, by upstream and whether a pooled one was reused.
    pub upstream_connections: IntCounterVec,
    /// Upstream failures by upstream and kind (connect_refused, connect_timeout, tls, ...).
    pub upstream_errors: IntCounterVec,
    /// Cache lookups by route and result (the `X-Cache` value).
    pub cache_lookups: IntCounterVec,
    /// Requests that waited on the cache lock for another request to fill the entry.
    pub cache_coalesced: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_evictions: IntGauge,
    /// Purge requests by kind (url, category) and entries they removed.
    pub cache_purges: IntCounterVec,
    pub cache_purged_entries: IntCounterVec,
    /// Calls into plugins by plugin and callback, their duration, and faults by kind.
    pub plugin_calls: IntCounterVec,
    pub plugin_call_seconds: HistogramVec,
    pub plugin_faults: IntCounterVec,
    /// VMs rebuilt after a fault, by plugin.
    pub plugin_vm_restarts: IntCounterVec,
    /// Requests a failed plugin answered 503 (`closed`) or skipped (`open`).
    pub plugin_failure_outcomes: IntCounterVec,
    pub plugin_context_revivals: IntCounterVec,
    /// Plugin shared data: entries, bytes, and what it gave up (`expired`, `evicted`, `refused`).
    pub shared_data_entries: IntGauge,
    pub shared_data_bytes: IntGauge,
    pub shared_data_losses: IntGaugeVec,
    /// Client connections open now, and how often accepting paused at downstream.max_connections.
    pub downstream_connections: IntGauge,
    pub downstream_accept_pauses: IntCounter,
    /// Client TLS handshakes by kind (`full`, `resumed`), and failures by reason (`timeout`,
    /// `refused`).
    pub downstream_tls_handshakes: IntCounterVec,
    pub downstream_tls_handshake_failures: IntCounterVec,
    /// The configuration generation serving new requests (1 at start, +1 per applied reload).
    pub config_generation: IntGauge,
    /// Reloads by result (`applied`, `invalid`, `plugin_failed`).
    pub config_reloads: IntCounterVec,
    /// 1 while this instance reaches Redis (its cluster view is live), 0 while cluster rules
    /// run on local limits; instances last seen alive; Redis commands sent, by kind.
    pub cluster_connected: IntGauge,
    pub cluster_instances: IntGauge,
    pub cluster_redis_commands: IntCounterVec,
    /// Cluster-rule decisions by how they were made (`lease`, `debt`, `refused`, `local`).
    pub cluster_rate_limit_decisions: IntCounterVec,
}

/// Static metric definitions are startup invariants: a bad one fails every test run at once.
#[allow(clippy::expect_used)]
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

#[allow(clippy::expect_used)]
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            requests: register(
                &r,
                counter_vec(
                    "edge_requests_total",
                    "Downstream requests by route and status.",
                    &["route", "status"],
                ),
            ),
            request_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "edge_request_duration_seconds",
                        "Time from request to response end, by route.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )
                .expect("valid histogram definition"),
            ),
            in_flight: register(
                &r,
                IntGauge::new("edge_requests_in_flight", "Requests being handled now.")
                    .expect("valid gauge definition"),
            ),
            upstream_connections: register(
                &r,
                counter_vec(
                    "edge_upstream_connections_total",
                    "Upstream connections used per request, by upstream and reuse of a pooled one.",
                    &["upstream", "reused"],
                ),
            ),
            upstream_errors: register(
                &r,
                counter_vec(
                    "edge_upstream_errors_total",
                    "Upstream failures by upstream and kind.",
                    &["upstream", "kind"],
                ),
            ),
            cache_lookups: register(&r, counter_vec("edge_cache_lookups_total", "Cache lookups by route and result (HIT, MISS, STALE, EXPIRED, REVALIDATED, BYPASS).", &["route", "result"])),
            cache_coalesced: register(&r, counter_vec("edge_cache_coalesced_waiters_total", "Requests that waited for another request to fill the same entry.", &["route"])),
            cache_entries: register(&r, IntGauge::new("edge_cache_entries", "Entries in the response cache.").expect("valid gauge definition")),
            cache_bytes: register(&r, IntGauge::new("edge_cache_bytes", "Weighted bytes in the response cache (bodies + metadata).").expect("valid gauge definition")),
            cache_evictions: register(&r, IntGauge::new("edge_cache_evictions", "Entries evicted to stay within cache.max_bytes, since start.").expect("valid gauge definition")),
            cache_purges: register(&r, counter_vec("edge_cache_purges_total", "Purge requests by kind.", &["kind"])),
            cache_purged_entries: register(&r, counter_vec("edge_cache_purged_entries_total", "Entries removed by purges, by kind.", &["kind"])),
            plugin_calls: register(&r, counter_vec("edge_plugin_calls_total", "Calls into plugins by plugin and callback.", &["plugin", "callback"])),
            plugin_call_seconds: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("edge_plugin_call_duration_seconds", "Time in one plugin callback (one call in 8 is timed).")
                        .buckets(vec![0.000_001, 0.000_005, 0.000_02, 0.000_1, 0.000_5, 0.002, 0.01, 0.05, 0.25, 1.0]),
                    &["plugin", "callback"],
                )
                .expect("valid histogram definition"),
            ),
            plugin_faults: register(&r, counter_vec("edge_plugin_faults_total", "Plugin calls that trapped, overran their CPU deadline or their memory cap.", &["plugin", "callback", "kind"])),
            plugin_vm_restarts: register(&r, counter_vec("edge_plugin_vm_restarts_total", "Plugin VMs rebuilt after a fault.", &["plugin"])),
            plugin_context_revivals: register(&r, counter_vec("edge_plugin_context_revivals_total", "In-flight requests whose plugin VM was rebuilt under them (another request's fault): their context was created anew on the new VM and their earlier header callbacks re-run.", &["plugin"])),
            plugin_failure_outcomes: register(&r, counter_vec("edge_plugin_failure_outcomes_total", "Requests hit by a plugin fault, by the plugin's failure mode (closed: 503, open: skipped).", &["plugin", "mode"])),
            shared_data_entries: register(&r, IntGauge::new("edge_plugin_shared_data_entries", "Entries in the plugins' shared data store.").expect("valid gauge definition")),
            shared_data_bytes: register(&r, IntGauge::new("edge_plugin_shared_data_bytes", "Weighted bytes in the plugins' shared data store (plugin_host.shared_data.max_bytes bounds it).").expect("valid gauge definition")),
            shared_data_losses: register(&r, IntGaugeVec::new(Opts::new("edge_plugin_shared_data_losses", "Since start: entries removed as expired, entries without a TTL evicted (least recently used) to make room, and writes refused because only live TTL entries were left."), &["kind"]).expect("valid gauge definition")),
            downstream_connections: register(&r, IntGauge::new("edge_downstream_connections", "Client connections open on the data plane.").expect("valid gauge definition")),
            downstream_tls_handshakes: register(&r, IntCounterVec::new(Opts::new("edge_downstream_tls_handshakes_total", "Completed client TLS handshakes by kind (full, resumed)."), &["kind"]).expect("valid counter definition")),
            downstream_tls_handshake_failures: register(&r, IntCounterVec::new(Opts::new("edge_downstream_tls_handshake_failures_total", "Client TLS handshakes that failed, by reason (timeout, refused: protocol, certificate or SNI)."), &["reason"]).expect("valid counter definition")),
            downstream_accept_pauses: register(&r, IntCounter::new("edge_downstream_accept_pauses_total", "Times accepting new client connections paused because downstream.max_connections were open.").expect("valid counter definition")),
            config_generation: register(&r, IntGauge::new("edge_config_generation", "Configuration generation serving new requests: 1 at start, +1 per applied reload.").expect("valid gauge definition")),
            config_reloads: register(&r, counter_vec("edge_config_reloads_total", "Reloads by result: applied, invalid (the file has problems), plugin_failed (a plugin did not start).", &["result"])),
            cluster_connected: register(&r, IntGauge::new("edge_cluster_connected", "1 while this instance reaches Redis (cluster rules enforced cluster-wide), 0 while they run on local limits.").expect("valid gauge definition")),
            cluster_instances: register(&r, IntGauge::new("edge_cluster_instances", "Instances seen alive through Redis (this one included) at the last sync.").expect("valid gauge definition")),
            cluster_redis_commands: register(&r, counter_vec("edge_cluster_redis_commands_total", "Redis commands sent, by kind (lease, heartbeat) and result (ok, error).", &["kind", "result"])),
            cluster_rate_limit_decisions: register(&r, counter_vec("edge_cluster_rate_limit_decisions_total", "Cluster-rule decisions: lease (a token leased from Redis), debt (before the first lease; charged at the next sync), refused, local (Redis away: local limits).", &["decision"])),
            registry: r,
        }
    }

    /// The registry, for series defined at run time (plugin metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%err, "metrics encoding failed");
        }
        out
    }
}
