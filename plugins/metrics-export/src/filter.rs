//! The business-metrics step of a request over the host ABI: its labels when the request
//! headers are seen, the status and cache result from the response headers, and at `on_log`
//! one increment of the request counter and one duration sample. Series are defined with
//! `proxy_define_metric` the first time a label set is seen (the name is formatted only then).
//! This plugin's HTTP context runs it, and so does any plugin composing it (`shop-edge`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

use plugin_support::FastMap;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType};

use crate::labels::{self, cache_index, cache_name, status_index, Guard, RequestLabels};

/// One series: which metric, and its label values as indexes (see [`labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SeriesKey {
    /// labels, status class, cache result, client class
    Requests(RequestLabels, u16, u16, u16),
    /// category, cache result, status class
    Duration(u16, u16, u16),
}

/// Metric ids by series, defined on first use (label sets are bounded by the guard: the fast
/// hasher is safe here).
#[derive(Debug, Default)]
struct Registry {
    ids: FastMap<SeriesKey, u32>,
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

/// What the request headers said: when, which labels, which client class.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    started: SystemTime,
    labels: RequestLabels,
    class: u16,
}

/// What the response headers said, as label indexes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answered {
    status: u16,
    cache: u16,
}

/// One VM's recorder: the label guard and the series it defined.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub guard: Rc<Guard>,
    registry: Rc<RefCell<Registry>>,
}

fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

impl Recorder {
    pub fn new(guard: Rc<Guard>) -> Self {
        Self {
            guard,
            registry: Rc::default(),
        }
    }

    /// At the request headers: the request's labels (`query` without `?`) and client class.
    pub fn start(&self, query: &str, client_id: Option<&str>, now: SystemTime) -> Seen {
        Seen {
            started: now,
            labels: self.guard.request_labels(query),
            class: self.guard.client_class(client_id),
        }
    }

    /// At the response headers: the status and `X-Cache`.
    pub fn answered() -> Answered {
        Answered {
            status: status_index(response_header(":status").as_deref()),
            cache: cache_index(response_header("x-cache").as_deref()),
        }
    }

    /// At `on_log`: counts the request and records its duration.
    pub fn log(&self, seen: Seen, answered: Answered) {
        let now = hostcalls::get_current_time().unwrap_or(seen.started);
        let micros = now
            .duration_since(seen.started)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let Seen { labels, class, .. } = seen;
        let Answered { status, cache } = answered;
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
