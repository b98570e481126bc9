//! The proxy-wasm (ABI v0.2.1) plugin host: modules compiled once by a shared wasmtime engine,
//! a few sandboxed VMs per plugin (each hosting many HTTP contexts), the host functions split
//! by ABI section (`abi/`), the host-wide shared data store, and the per-route chain the proxy
//! phases drive.

pub mod abi;
pub mod callback_metrics;
pub mod callout;
pub mod chain;
pub mod defined_metrics;
pub mod engine;
pub mod host;
pub mod memory;
pub mod pairs;
pub mod shared_data;
pub mod state;
pub mod ticker;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use host::{PluginHost, RunningPlugin};

/// What a request gets when a plugin's VM fails under it (trap, CPU deadline, memory cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// The request is answered 503 with a body naming the plugin.
    #[default]
    Closed,
    /// The plugin is skipped for that request.
    Open,
}

/// One configured plugin, validated.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub module: PathBuf,
    /// Bytes for `on_configure` (a YAML mapping as JSON, a string as is).
    pub config: Vec<u8>,
    /// Bytes for `on_vm_start`.
    pub vm_config: Vec<u8>,
    pub failure_mode: FailureMode,
    pub vms: usize,
    pub memory_bytes: u64,
    /// Largest body held for the plugin while it buffers.
    pub max_body_bytes: usize,
    pub cpu_deadline: Duration,
    pub allowed_upstreams: Vec<String>,
    /// The `plugin_root_id` property (default: the name).
    pub root_id: String,
}

/// Host-wide plugin settings, validated.
#[derive(Debug, Clone, Default)]
pub struct HostSettings {
    pub module_cache_dir: Option<PathBuf>,
    pub shared_data_max_bytes: u64,
    pub shared_data_ttl_by_prefix: Vec<(String, Duration)>,
}

/// Why a plugin could not be loaded or a call into it failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{plugin}`: reading {path}: {source}")]
    Read {
        plugin: String,
        path: String,
        source: std::io::Error,
    },
    #[error("plugin `{plugin}`: not a valid wasm module: {reason}")]
    Compile { plugin: String, reason: String },
    #[error("plugin `{plugin}`: the module does not export `proxy_abi_version_0_2_1` (or 0_2_0): not a proxy-wasm plugin")]
    NoAbi { plugin: String },
    #[error("plugin `{plugin}`: the module imports {missing}, which this host does not provide")]
    MissingImport { plugin: String, missing: String },
    #[error("plugin `{plugin}`: {callback} rejected the configuration (returned false)")]
    Rejected {
        plugin: String,
        callback: &'static str,
    },
    #[error("plugin `{plugin}`: {callback} failed: {fault}")]
    Fault {
        plugin: String,
        callback: &'static str,
        fault: Fault,
    },
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// How a call into a VM ended badly; the VM is discarded and rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("trap: {0}")]
    Trap(String),
    #[error("CPU deadline exceeded")]
    Deadline,
    #[error("memory cap exceeded")]
    Memory,
}

impl Fault {
    /// The metric label of this fault.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Trap(_) => "trap",
            Fault::Deadline => "deadline",
            Fault::Memory => "memory",
        }
    }
}
