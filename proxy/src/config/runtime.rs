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
use crate::tls::TlsSettings;
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
    /// HTTP/2 limits per client connection (start-only).
    pub h2: H2Limits,
}

/// HTTP/2 limits for clients (`downstream.h2`).
#[derive(Debug, Clone, PartialEq)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
    /// Bytes of a decoded request head (HEADERS and its CONTINUATIONs).
    pub max_header_list_size: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    /// Streams the client resets before the proxy accepted them; beyond, the connection is
    /// closed (rapid reset).
    pub max_pending_reset_streams: usize,
    /// Streams the proxy resets for the client's protocol errors; beyond, the connection is
    /// closed.
    pub max_local_error_resets: usize,
}

/// A data-plane listener (its address is start-only; its TLS settings reload).
#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<Arc<TlsSettings>>,
}

#[derive(Debug)]
pub struct RuntimeConfig {
    pub server: ServerSettings,
    /// The first data-plane listener's address (`listen`, or `listeners[0]`).
    pub listen: SocketAddr,
    /// Every data-plane listener, `listen` first.
    pub listeners: Vec<Listener>,
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
    /// The store shared with other instances (`None`: this instance is on its own).
    pub redis: Option<super::redis::RedisSettings>,
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
