//! Metrics plugins define with `proxy_define_metric`, exported as Prometheus series named
//! `edge_plugin_<name>` and labelled `plugin="<plugin>"`. A metric name may carry labels of its
//! own in Prometheus form, `requests_total{category="polo",status="2xx"}`: each distinct label
//! set is one series, so plugins get dimensions without an ABI change. Every VM of a plugin that
//! defines the same name gets the same series.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Bucket bounds of plugin histograms. `proxy_record_metric` takes whole numbers, so the
/// bounds are 1-2-5 steps from 1 to 10^7: microseconds up to 10 s, milliseconds up to ~3 h,
/// or bytes up to 10 MB all land in useful buckets.
pub const HISTOGRAM_BUCKETS: [f64; 22] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5,
    5e5, 1e6, 2e6, 5e6, 1e7,
];

/// The ABI's metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_abi(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            2 => Some(Self::Histogram),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Family {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

/// One series, as a VM keeps it once resolved (updates then touch only its atomics, not the
/// registry's lock).
#[derive(Debug, Clone)]
pub enum Series {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

impl Series {
    /// Adds to a counter or gauge.
    pub fn increment(&self, offset: i64) -> Result<(), StatsError> {
        match self {
            Series::Counter(c) if offset >= 0 => c.inc_by(offset as u64),
            Series::Counter(_) => {
                return Err(StatsError::BadArgument("a counter cannot go down".into()))
            }
            Series::Gauge(g) => g.add(offset),
            Series::Histogram(_) => {
                return Err(StatsError::BadArgument("increment on a histogram".into()))
            }
        }
        Ok(())
    }

    /// Sets a gauge, observes a histogram value, or raises a counter to `value`.
    pub fn record(&self, value: u64) {
        match self {
            Series::Counter(c) => {
                let current = c.get();
                if value > current {
                    c.inc_by(value - current);
                }
            }
            Series::Gauge(g) => g.set(i64::try_from(value).unwrap_or(i64::MAX)),
            Series::Histogram(h) => h.observe(value as f64),
        }
    }

    pub fn get(&self) -> Result<u64, StatsError> {
        match self {
            Series::Counter(c) => Ok(c.get()),
            Series::Gauge(g) => Ok(u64::try_from(g.get()).unwrap_or(0)),
            Series::Histogram(_) => Err(StatsError::BadArgument(
                "a histogram has no single value".into(),
            )),
        }
    }
}

/// Why a metric operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("no metric with id {0}")]
    NotFound(u32),
    #[error("{0}")]
    BadArgument(String),
}

#[derive(Debug, Default)]
struct Inner {
    families: HashMap<String, (Vec<String>, Family)>,
    ids: HashMap<(String, String), u32>,
    series: Vec<Series>,
}

/// Host-wide registry of plugin-defined metrics.
#[derive(Debug)]
pub struct PluginStats {
    registry: Registry,
    inner: Mutex<Inner>,
}

/// `base{a="1",b="2"}` -> (`base`, [(a, 1), (b, 2)]), names made Prometheus-safe.
fn parse_name(name: &str) -> Result<(String, Vec<(String, String)>), String> {
    let (base, labels) = match name.split_once('{') {
        Some((base, rest)) => {
            let body = rest
                .strip_suffix('}')
                .ok_or_else(|| format!("metric name `{name}`: labels must end with }}"))?;
            (base, body)
        }
        None => (name, ""),
    };
    let mut pairs = Vec::new();
    for part in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("metric name `{name}`: label `{part}` is not key=\"value\""))?;
        let value = value.trim().trim_matches('"');
        pairs.push((sanitize(key.trim()), value.to_string()));
    }
    pairs.sort();
    Ok((format!("edge_plugin_{}", sanitize(base)), pairs))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl PluginStats {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            inner: Mutex::default(),
        }
    }

    /// The id of `name` for `plugin`, defining it on first use.
    pub fn define(&self, plugin: &str, kind: MetricKind, name: &str) -> Result<u32, StatsError> {
        let (family_name, labels) = parse_name(name).map_err(StatsError::BadArgument)?;
        let label_names: Vec<String> = std::iter::once("plugin".to_string())
            .chain(labels.iter().map(|(k, _)| k.clone()))
            .collect();
        let label_values: Vec<&str> = std::iter::once(plugin)
            .chain(labels.iter().map(|(_, v)| v.as_str()))
            .collect();
        let series_key = (family_name.clone(), label_values.join("\u{1f}"));
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = inner.ids.get(&series_key) {
            return Ok(*id);
        }
        let family = match inner.families.get(&family_name) {
            Some((names, family)) => {
                if names != &label_names || !same_kind(family, kind) {
                    return Err(StatsError::BadArgument(format!(
                        "metric `{family_name}` is already defined with another kind or other labels"
                    )));
                }
                family.clone()
            }
            None => {
                let family = self.new_family(&family_name, kind, &label_names)?;
                inner
                    .families
                    .insert(family_name.clone(), (label_names.clone(), family.clone()));
                family
            }
        };
        let series = match &family {
            Family::Counter(v) => v
                .get_metric_with_label_values(&label_values)
                .map(Series::Counter),
            Family::Gauge(v) => v
                .get_metric_with_label_values(&label_values)
                .map(Series::Gauge),
            Family::Histogram(v) => v
                .get_metric_with_label_values(&label_values)
                .map(Series::Histogram),
        }
        .map_err(|e| StatsError::BadArgument(e.to_string()))?;
        let id = u32::try_from(inner.series.len())
            .map_err(|e| StatsError::BadArgument(e.to_string()))?;
        inner.series.push(series);
        inner.ids.insert(series_key, id);
        Ok(id)
    }

    fn new_family(
        &self,
        name: &str,
        kind: MetricKind,
        labels: &[String],
    ) -> Result<Family, StatsError> {
        let help = "Defined by a plugin (proxy_define_metric).";
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let bad = |e: prometheus::Error| StatsError::BadArgument(e.to_string());
        let family = match kind {
            MetricKind::Counter => {
                Family::Counter(IntCounterVec::new(Opts::new(name, help), &labels).map_err(bad)?)
            }
            MetricKind::Gauge => {
                Family::Gauge(IntGaugeVec::new(Opts::new(name, help), &labels).map_err(bad)?)
            }
            MetricKind::Histogram => Family::Histogram(
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(HISTOGRAM_BUCKETS.to_vec()),
                    &labels,
                )
                .map_err(bad)?,
            ),
        };
        let collector: Box<dyn Collector> = match &family {
            Family::Counter(v) => Box::new(v.clone()),
            Family::Gauge(v) => Box::new(v.clone()),
            Family::Histogram(v) => Box::new(v.clone()),
        };
        self.registry.register(collector).map_err(bad)?;
        Ok(family)
    }

    /// Series `id` (as [`PluginStats::define`] returned it).
    pub fn series(&self, id: u32) -> Result<Series, StatsError> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .series
            .get(id as usize)
            .cloned()
            .ok_or(StatsError::NotFound(id))
    }
}

fn same_kind(family: &Family, kind: MetricKind) -> bool {
    matches!(
        (family, kind),
        (Family::Counter(_), MetricKind::Counter)
            | (Family::Gauge(_), MetricKind::Gauge)
            | (Family::Histogram(_), MetricKind::Histogram)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_labels_become_series_of_one_family() {
        let registry = Registry::new();
        let stats = PluginStats::new(registry.clone());
        let polo = stats
            .define(
                "shop",
                MetricKind::Counter,
                r#"requests_total{category="polo"}"#,
            )
            .unwrap();
        let linen = stats
            .define(
                "shop",
                MetricKind::Counter,
                r#"requests_total{category="linen"}"#,
            )
            .unwrap();
        assert_ne!(polo, linen);
        assert_eq!(
            stats
                .define(
                    "shop",
                    MetricKind::Counter,
                    r#"requests_total{category="polo"}"#
                )
                .unwrap(),
            polo
        );
        stats.series(polo).unwrap().increment(3).unwrap();
        stats.series(polo).unwrap().record(10);
        assert_eq!(stats.series(polo).unwrap().get().unwrap(), 10);
        assert!(stats.series(polo).unwrap().increment(-1).is_err());
        assert!(stats
            .define("shop", MetricKind::Gauge, "requests_total{category=\"x\"}")
            .is_err());
        let gauge = stats
            .define("shop", MetricKind::Gauge, "in.flight")
            .unwrap();
        stats.series(gauge).unwrap().increment(2).unwrap();
        assert_eq!(stats.series(gauge).unwrap().get().unwrap(), 2);
        assert_eq!(stats.series(99).err(), Some(StatsError::NotFound(99)));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"edge_plugin_requests_total{category="polo",plugin="shop"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"edge_plugin_in_flight{plugin="shop"} 2"#),
            "{text}"
        );
    }
}
