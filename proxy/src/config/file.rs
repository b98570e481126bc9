//! The serde mirror of `edge.yaml`: every key with its default; unknown keys are errors, and
//! parse errors carry the key path that caused them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::listeners::{H2File, ListenerFile};
pub use super::plugins::{PluginFile, PluginHostFile};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerFile,
    /// Plain HTTP on this address (the first listener); with neither `listen` nor `listeners`,
    /// 127.0.0.1:8080.
    pub listen: Option<String>,
    /// More listeners, plain or TLS.
    pub listeners: Vec<ListenerFile>,
    /// `off`, `stdout`, or a file path.
    pub access_log: String,
    pub downstream: DownstreamFile,
    pub admin: AdminFile,
    pub upstreams: BTreeMap<String, UpstreamFile>,
    pub routes: Vec<RouteFile>,
    pub cache: CacheFile,
    pub plugins: Vec<PluginFile>,
    pub plugin_host: PluginHostFile,
    /// The store shared by several instances (off unless set).
    pub redis: Option<super::redis::RedisFile>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            server: ServerFile::default(),
            listen: None,
            listeners: Vec::new(),
            access_log: "stdout".into(),
            downstream: DownstreamFile::default(),
            admin: AdminFile::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            cache: CacheFile::default(),
            plugins: Vec::new(),
            plugin_host: PluginHostFile::default(),
            redis: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub threads: usize,
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: String,
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    pub write_buffer: usize,
    pub work_stealing: bool,
}

/// Default per-connection write buffer: a response whose head and body fit goes out in one write.
pub const DEFAULT_WRITE_BUFFER: usize = 16 * 1024;
/// Largest write buffer accepted (it is allocated for every client connection).
pub const MAX_WRITE_BUFFER: usize = 1024 * 1024;

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(10),
            upgrade_sock: "/tmp/edge-proxy-upgrade.sock".into(),
            upgrade_timeout: Duration::from_secs(10),
            write_buffer: DEFAULT_WRITE_BUFFER,
            work_stealing: true,
        }
    }
}

/// Limits on client connections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamFile {
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    pub max_requests_per_connection: u32,
    pub max_connections: usize,
    pub h2: H2File,
}

impl Default for DownstreamFile {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            max_requests_per_connection: 1000,
            max_connections: 4096,
            h2: H2File::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub listen: String,
    /// Bearer token for state-changing admin actions other than purges (`POST /config/reload`).
    pub token: Option<String>,
    /// Serve `GET /debug/pprof/profile` (behind `token`).
    pub profiling: bool,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            token: None,
            profiling: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    pub addresses: Vec<String>,
    pub tls: Option<UpstreamTlsFile>,
    pub host_header: Option<String>,
    /// The upstream is another edge-proxy instance (a shield tier): its `X-Cache` is kept and
    /// shown after ours (`MISS, HIT from shield`).
    pub shield: bool,
    pub pool_size: usize,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub tcp_keepalive: Option<TcpKeepaliveFile>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub total_connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            tls: None,
            host_header: None,
            shield: false,
            pool_size: 128,
            idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Some(TcpKeepaliveFile::default()),
            connect_timeout: Duration::from_secs(1),
            total_connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub sni: String,
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepaliveFile {
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub count: usize,
}

impl Default for TcpKeepaliveFile {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub cache: Option<RouteCacheFile>,
    /// Plugin names, run in this order on every request of the route (before the cache).
    #[serde(default)]
    pub plugins: Vec<String>,
}

/// The shared response cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    pub max_bytes: u64,
    pub purge_token: Option<String>,
}

impl Default for CacheFile {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            purge_token: None,
        }
    }
}

/// A route's cache policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheFile {
    pub enabled: bool,
    pub key_query_params: Vec<String>,
    pub tag_query_param: Option<String>,
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
}

impl Default for RouteCacheFile {
    fn default() -> Self {
        Self {
            enabled: true,
            key_query_params: Vec::new(),
            tag_query_param: None,
            default_ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            lock_timeout: Duration::from_secs(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, config_diagnostics::Problem> {
        config_diagnostics::parse_yaml(text)
    }

    #[test]
    fn unknown_keys_are_named_with_their_full_path() {
        let p = parse("upstreams:\n  catalog:\n    adresses: []\n").unwrap_err();
        assert_eq!(p.path, "upstreams.catalog.adresses");
        assert_eq!(p.problem, "unknown key");
        assert!(p.hint.unwrap().contains("addresses"));
        assert_eq!(parse("listn: x\n").unwrap_err().path, "listn");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let p = parse("upstreams:\n  c:\n    read_timeout: soon\n").unwrap_err();
        assert_eq!(p.path, "upstreams.c.read_timeout");
        assert!(p.hint.unwrap().contains("250ms"));
    }
}
