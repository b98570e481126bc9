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

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::labels::{cache_result, status_class, Guard, RequestLabels};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot::default()) });
}}

/// Metric ids by full name (with labels), defined on first use.
#[derive(Default)]
struct Registry {
    ids: HashMap<String, u32>,
}

impl Registry {
    fn id(&mut self, kind: MetricType, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return Some(*id);
        }
        match hostcalls::define_metric(kind, &name) {
            Ok(id) => {
                self.ids.insert(name, id);
                Some(id)
            }
            Err(status) => {
                log::warn!("metrics-export: cannot define `{name}`: {status:?}");
                None
            }
        }
    }
}

#[derive(Default)]
struct MetricsRoot {
    guard: Rc<Guard>,
    registry: Rc<RefCell<Registry>>,
}

impl Context for MetricsRoot {}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Guard::parse(&bytes) {
            Ok(guard) => {
                self.guard = Rc::new(guard);
                true
            }
            Err(e) => {
                log::error!("metrics-export: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RequestMetrics {
            guard: self.guard.clone(),
            registry: self.registry.clone(),
            seen: None,
            status: None,
            cache: None,
        }))
    }
}

struct RequestMetrics {
    guard: Rc<Guard>,
    registry: Rc<RefCell<Registry>>,
    /// Start time, request labels and client class, once the request headers were seen.
    seen: Option<(SystemTime, RequestLabels, String)>,
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
        let status = status_class(self.status.as_deref());
        let cache = cache_result(self.cache.as_deref());
        let prefix = &self.guard.metric_prefix;
        let RequestLabels {
            category,
            brand,
            size,
        } = labels;
        let mut registry = self.registry.borrow_mut();
        let requests = format!(
            "{prefix}requests_total{{category=\"{category}\",brand=\"{brand}\",size=\"{size}\",status_class=\"{status}\",cache=\"{cache}\",client_class=\"{class}\"}}"
        );
        if let Some(id) = registry.id(MetricType::Counter, requests) {
            let _ = hostcalls::increment_metric(id, 1);
        }
        let duration = format!(
            "{prefix}request_duration_us{{category=\"{category}\",cache=\"{cache}\",status_class=\"{status}\"}}"
        );
        if let Some(id) = registry.id(MetricType::Histogram, duration) {
            let _ = hostcalls::record_metric(id, micros);
        }
    }
}
