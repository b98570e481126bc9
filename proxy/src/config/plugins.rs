//! The `plugins:` and `plugin_host:` sections: their YAML mirror and their validation into
//! [`PluginSpec`]s (module paths resolved, config handed over as bytes, limits checked).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use config_diagnostics::Problems;
use serde::{Deserialize, Serialize};

use crate::plugin::{FailureMode, HostSettings, PluginSpec};

/// One proxy-wasm plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    pub name: String,
    /// Path of the `.wasm` module (relative to the config file).
    pub module: String,
    /// Handed to `on_configure`: a mapping as JSON, a string as is, nothing as empty.
    #[serde(default)]
    pub config: serde_yaml_ng::Value,
    /// Handed to `on_vm_start`, the same way.
    #[serde(default)]
    pub vm_config: serde_yaml_ng::Value,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// VM instances (each hosts many requests); default: one per worker thread.
    #[serde(default)]
    pub vms: Option<usize>,
    #[serde(default)]
    pub limits: PluginLimitsFile,
    /// Upstreams this plugin may `proxy_http_call`.
    #[serde(default)]
    pub allowed_upstreams: Vec<String>,
    /// The root id the plugin reads as the `plugin_root_id` property (Envoy's `root_id`): SDKs
    /// that host several root contexts in one module pick the one registered under it.
    /// Default: the plugin's name.
    #[serde(default)]
    pub root_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimitsFile {
    /// Linear memory cap of each VM, in bytes.
    pub memory_bytes: u64,
    /// Largest body the host holds for the plugin while it buffers (pauses a body callback).
    pub max_body_bytes: u64,
    /// CPU deadline of each call into the plugin.
    #[serde(with = "humantime_serde")]
    pub cpu_deadline: Duration,
}

impl Default for PluginLimitsFile {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            cpu_deadline: Duration::from_millis(100),
        }
    }
}

/// Host-wide plugin settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginHostFile {
    /// Folder for compiled modules (keyed by content hash); unset: compile at every start.
    pub module_cache_dir: Option<String>,
    pub shared_data: SharedDataFile,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedDataFile {
    /// Bound on keys + values of the host-wide shared data store.
    pub max_bytes: u64,
    /// Keys starting with a prefix expire this long after their last write.
    #[serde(with = "ttl_map")]
    pub ttl_by_prefix: BTreeMap<String, Duration>,
}

impl Default for SharedDataFile {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            ttl_by_prefix: BTreeMap::new(),
        }
    }
}

mod ttl_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let text: BTreeMap<&String, String> = map
            .iter()
            .map(|(k, v)| (k, humantime::format_duration(*v).to_string()))
            .collect();
        text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let text = BTreeMap::<String, String>::deserialize(d)?;
        text.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k, d))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Largest per-VM memory cap accepted.
const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The bytes a plugin gets for a YAML value: a string as is, anything else as JSON, nothing empty.
fn config_bytes(value: &serde_yaml_ng::Value) -> Result<Vec<u8>, String> {
    match value {
        serde_yaml_ng::Value::Null => Ok(Vec::new()),
        serde_yaml_ng::Value::String(s) => Ok(s.clone().into_bytes()),
        other => serde_json::to_vec(other).map_err(|e| e.to_string()),
    }
}

/// Validates every plugin and the host settings; `threads` is the default VM count.
pub(super) fn validate(
    plugins: &[PluginFile],
    host: &PluginHostFile,
    upstreams: &BTreeSet<&str>,
    threads: usize,
    base: &Path,
    problems: &mut Problems,
) -> (Vec<PluginSpec>, HostSettings) {
    let mut names = BTreeSet::new();
    let mut specs = Vec::new();
    for (i, p) in plugins.iter().enumerate() {
        let at = |key: &str| format!("plugins[{i}].{key}");
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            problems.add(
                at("name"),
                format!("`{}` is not a plugin name", p.name),
                Some("letters, digits, - and _ (it labels metrics and logs)"),
            );
        }
        if !names.insert(p.name.as_str()) {
            problems.add(
                at("name"),
                format!("duplicate plugin name `{}`", p.name),
                None,
            );
        }
        let module = config_diagnostics::resolve(base, &p.module);
        if !module.is_file() {
            problems.add(
                at("module"),
                format!("file {} does not exist", module.display()),
                Some("build plugins with `make plugins`; paths are relative to the config file's folder"),
            );
        }
        let config = config_bytes(&p.config).unwrap_or_else(|e| {
            problems.add(at("config"), e, Some("use a mapping or a string"));
            Vec::new()
        });
        let vm_config = config_bytes(&p.vm_config).unwrap_or_else(|e| {
            problems.add(at("vm_config"), e, Some("use a mapping or a string"));
            Vec::new()
        });
        let vms = p.vms.unwrap_or(threads);
        if vms == 0 || vms > 64 {
            problems.add(
                at("vms"),
                format!("{vms} is not within 1..=64"),
                Some("one per worker thread is the default"),
            );
        }
        if p.limits.memory_bytes < 1024 * 1024 || p.limits.memory_bytes > MAX_MEMORY_BYTES {
            problems.add(
                at("limits.memory_bytes"),
                format!("{} is not within 1 MiB..=4 GiB", p.limits.memory_bytes),
                Some("e.g. 67108864 for 64 MiB"),
            );
        }
        problems.positive(&at("limits.cpu_deadline"), p.limits.cpu_deadline);
        if p.limits.max_body_bytes == 0 {
            problems.add(
                at("limits.max_body_bytes"),
                "must be at least 1",
                Some("bodies a plugin buffers beyond it are refused: 413 for requests, 502 for responses"),
            );
        }
        for (j, upstream) in p.allowed_upstreams.iter().enumerate() {
            if !upstreams.contains(upstream.as_str()) {
                let known: Vec<&str> = upstreams.iter().copied().collect();
                problems.add(
                    at(&format!("allowed_upstreams[{j}]")),
                    format!("unknown upstream `{upstream}`"),
                    Some(&format!("defined upstreams: {}", known.join(", "))),
                );
            }
        }
        specs.push(PluginSpec {
            name: p.name.clone(),
            module,
            config,
            vm_config,
            failure_mode: p.failure_mode,
            vms: vms.clamp(1, 64),
            memory_bytes: p.limits.memory_bytes,
            max_body_bytes: usize::try_from(p.limits.max_body_bytes).unwrap_or(usize::MAX),
            cpu_deadline: p.limits.cpu_deadline,
            allowed_upstreams: p.allowed_upstreams.clone(),
            root_id: p.root_id.clone().unwrap_or_else(|| p.name.clone()),
        });
    }
    if host.shared_data.max_bytes < 1024 {
        problems.add(
            "plugin_host.shared_data.max_bytes",
            "must be at least 1024",
            Some("e.g. 16777216 for 16 MiB"),
        );
    }
    for (prefix, ttl) in &host.shared_data.ttl_by_prefix {
        problems.positive(
            &format!("plugin_host.shared_data.ttl_by_prefix.{prefix}"),
            *ttl,
        );
    }
    let settings = HostSettings {
        module_cache_dir: host
            .module_cache_dir
            .as_deref()
            .map(|d| config_diagnostics::resolve(base, d)),
        shared_data_max_bytes: host.shared_data.max_bytes,
        shared_data_ttl_by_prefix: host
            .shared_data
            .ttl_by_prefix
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    };
    (specs, settings)
}

/// The chain of a route: plugin names -> indexes into the plugin list, in order.
pub(super) fn route_chain(
    route_index: usize,
    names: &[String],
    specs: &[PluginSpec],
    problems: &mut Problems,
) -> Vec<usize> {
    names
        .iter()
        .enumerate()
        .filter_map(|(j, name)| {
            let found = specs.iter().position(|s| &s.name == name);
            if found.is_none() {
                let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                problems.add(
                    format!("routes[{route_index}].plugins[{j}]"),
                    format!("unknown plugin `{name}`"),
                    Some(&format!("defined plugins: {}", known.join(", "))),
                );
            }
            found
        })
        .collect()
}
