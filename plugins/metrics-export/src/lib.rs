//! Business metrics filter (proxy-wasm, `wasm32-wasip1`): for every request it sees, a counter
//! `<prefix>requests_total` by category, brand, size (from the query), status class, cache
//! result (`X-Cache`) and client class (from the `auth.client_id` property), and a histogram
//! `<prefix>request_duration_us` (microseconds, request headers to log) by category, cache
//! result and status class. Series are defined with `proxy_define_metric` the first time a label
//! set is seen (the host exports them as `edge_plugin_<name>{plugin=...,...}`); every label value
//! is bounded by [`labels::Guard`].

pub mod labels;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::SystemTime;

use plugin_support::ConfiguredRoot;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel, MetricType};

use crate::labels::{cache_index, cache_name, status_index, Guard, RequestLabels};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        // One registry per VM, shared by its requests.
        let registry = Rc::new(RefCell::new(Registry::default()));
        Box::new(ConfiguredRoot::new(
            "metrics-export",
            Guard::parse,
            Box::new(move |guard| {
                Box::new(RequestMetrics {
                    guard,
                    registry: registry.clone(),
                    seen: None,
                    status: None,
                    cache: None,
                })
            }),
        ))
    });
}}

/// One series: which metric, and its label values as indexes (see [`labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SeriesKey {
    /// labels, status class, cache result, client class
    Requests(RequestLabels, u16, u16, u16),
    /// category, cache result, status class
    Duration(u16, u16, u16),
}

/// Metric ids by series, defined on first use (the name is formatted only then).
#[derive(Default)]
struct Registry {
    ids: HashMap<SeriesKey, u32>,
}

impl Registry {
    fn id(&mut self, key: SeriesKey, define: impl FnOnce() -> (MetricType, String)) -> Option<u32> {
        if let Some(id) = self.ids.get(&key) {
            return Some(*id);
        }
        let (kind, name) = define();
        match hostcalls::define_metric(kind, &name) {
            Ok(id) => {
                self.ids.insert(key, id);
                Some(id)
            }
            Err(status) => {
                log::warn!("metrics-export: cannot define `{name}`: {status:?}");
                None
            }
        }
    }
}

struct RequestMetrics {
    guard: Rc<Guard>,
    registry: Rc<RefCell<Registry>>,
    /// Start time, request labels and client class, once the request headers were seen.
    seen: Option<(SystemTime, RequestLabels, u16)>,
    status: Option<String>,
    cache: Option<String>,
}

impl Context for RequestMetrics {}

impl HttpContext for RequestMetrics {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let started = self.get_current_time();
        let target = self.get_http_request_header(":path").unwrap_or_default();
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let labels = self.guard.request_labels(query);
        let client_id = self
            .get_property(vec!["auth", "client_id"])
            .and_then(|b| String::from_utf8(b).ok());
        let class = self.guard.client_class(client_id.as_deref());
        self.seen = Some((started, labels, class));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.status = self.get_http_response_header(":status");
        self.cache = self.get_http_response_header("x-cache");
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some((started, labels, class)) = self.seen.take() else {
            return;
        };
        let micros = self
            .get_current_time()
            .duration_since(started)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let status = status_index(self.status.as_deref());
        let cache = cache_index(self.cache.as_deref());
        let guard = &self.guard;
        let mut registry = self.registry.borrow_mut();
        let requests = registry.id(SeriesKey::Requests(labels, status, cache, class), || {
            let name = format!(
                "{prefix}requests_total{{category=\"{category}\",brand=\"{brand}\",size=\"{size}\",status_class=\"{status}\",cache=\"{cache}\",client_class=\"{class}\"}}",
                prefix = guard.metric_prefix,
                category = guard.category(&labels),
                brand = guard.brand(&labels),
                size = guard.size(&labels),
                status = labels::status_class_name(status),
                cache = cache_name(cache),
                class = guard.client_class_name(class),
            );
            (MetricType::Counter, name)
        });
        if let Some(id) = requests {
            let _ = hostcalls::increment_metric(id, 1);
        }
        let duration = registry.id(SeriesKey::Duration(labels.category, cache, status), || {
            let name = format!(
                "{prefix}request_duration_us{{category=\"{category}\",cache=\"{cache}\",status_class=\"{status}\"}}",
                prefix = guard.metric_prefix,
                category = guard.category(&labels),
                cache = cache_name(cache),
                status = labels::status_class_name(status),
            );
            (MetricType::Histogram, name)
        });
        if let Some(id) = duration {
            let _ = hostcalls::record_metric(id, micros);
        }
    }
}
