//! What the host counts of its own calls into plugins: `edge_plugin_calls_total` and
//! `edge_plugin_call_duration_seconds` by plugin and callback, and `edge_plugin_faults_total`
//! by kind. Each VM counts into its own local copies, published in batches (shared atomics on
//! every call made the VMs of different worker threads fight over the same cache lines), and
//! times one call in [`TIME_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter};

use super::Fault;
use crate::metrics::Metrics;

/// The callbacks the host makes, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Initialize,
    ContextCreate,
    VmStart,
    Configure,
    Tick,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    HttpCallResponse,
    Log,
    Done,
    Delete,
}

impl Callback {
    pub const ALL: [Callback; 13] = [
        Callback::Initialize,
        Callback::ContextCreate,
        Callback::VmStart,
        Callback::Configure,
        Callback::Tick,
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::HttpCallResponse,
        Callback::Log,
        Callback::Done,
        Callback::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Callback::Initialize => "_initialize",
            Callback::ContextCreate => "proxy_on_context_create",
            Callback::VmStart => "proxy_on_vm_start",
            Callback::Configure => "proxy_on_configure",
            Callback::Tick => "proxy_on_tick",
            Callback::RequestHeaders => "proxy_on_request_headers",
            Callback::RequestBody => "proxy_on_request_body",
            Callback::ResponseHeaders => "proxy_on_response_headers",
            Callback::ResponseBody => "proxy_on_response_body",
            Callback::HttpCallResponse => "proxy_on_http_call_response",
            Callback::Log => "proxy_on_log",
            Callback::Done => "proxy_on_done",
            Callback::Delete => "proxy_on_delete",
        }
    }
}

/// Per-callback call counters and timers of one plugin, resolved once.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    plugin: String,
    calls: Vec<IntCounter>,
    seconds: Vec<Histogram>,
    metrics: Arc<Metrics>,
}

impl CallMetrics {
    pub fn new(plugin: &str, metrics: Arc<Metrics>) -> Self {
        let calls = Callback::ALL
            .iter()
            .map(|c| metrics.plugin_calls.with_label_values(&[plugin, c.name()]))
            .collect();
        let seconds = Callback::ALL
            .iter()
            .map(|c| {
                metrics
                    .plugin_call_seconds
                    .with_label_values(&[plugin, c.name()])
            })
            .collect();
        Self {
            plugin: plugin.to_string(),
            calls,
            seconds,
            metrics,
        }
    }

    /// A VM's own, unshared view of these series.
    pub(crate) fn local(&self) -> LocalCalls {
        LocalCalls {
            calls: self.calls.iter().map(IntCounter::local).collect(),
            seconds: self.seconds.iter().map(Histogram::local).collect(),
            pending: 0,
            last_flush: Instant::now(),
            calls_seen: 0,
        }
    }

    pub(crate) fn fault(&self, callback: Callback, fault: &Fault) {
        self.metrics
            .plugin_faults
            .with_label_values(&[self.plugin.as_str(), callback.name(), fault.kind()])
            .inc();
    }
}

/// Calls this VM made that are not yet in the shared series: counting into shared atomics on
/// every call made the VMs of different worker threads fight over the same cache lines.
pub(crate) struct LocalCalls {
    calls: Vec<LocalIntCounter>,
    seconds: Vec<LocalHistogram>,
    pending: u32,
    last_flush: Instant,
    calls_seen: u64,
}

/// One call in this many is timed for `edge_plugin_call_duration_seconds`. Prime, so a request's
/// fixed cycle of callbacks (six or seven of them) rotates through every callback kind.
pub const TIME_EVERY: u64 = 61;

/// Local call metrics reach `/metrics` after this many calls, or this long after the last flush
/// (checked at each call, and by the ticker for idle VMs).
const FLUSH_CALLS: u32 = 1024;
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);

impl LocalCalls {
    /// Whether the next call is timed: one in [`TIME_EVERY`] (reading the clock twice and
    /// finding the bucket cost about as much as a no-op callback's own host work).
    pub(crate) fn time_next(&self) -> bool {
        self.calls_seen.is_multiple_of(TIME_EVERY)
    }

    pub(crate) fn observe(&mut self, callback: Callback, started: Option<Instant>) {
        let i = callback as usize;
        self.calls[i].inc();
        self.calls_seen = self.calls_seen.wrapping_add(1);
        self.pending += 1;
        let mut due = self.pending >= FLUSH_CALLS;
        if let Some(started) = started {
            let now = Instant::now();
            self.seconds[i].observe(now.duration_since(started).as_secs_f64());
            due |= now.duration_since(self.last_flush) >= FLUSH_AFTER;
        }
        if due {
            self.flush();
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.pending == 0 {
            return;
        }
        self.calls.iter().for_each(LocalIntCounter::flush);
        self.seconds.iter().for_each(LocalHistogram::flush);
        self.pending = 0;
        self.last_flush = Instant::now();
    }
}
