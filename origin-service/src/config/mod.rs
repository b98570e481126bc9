//! Origin configuration: the YAML file (`file.rs`), its validation into every problem at once
//! (`validate.rs`), and the resolved, immutable `OriginConfig` the service runs with.

mod file;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config_diagnostics::{ConfigError, Problem};
pub use file::FileConfig;

/// The validated configuration, with every path absolute and every duration resolved.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    pub catalog: CatalogConfig,
    pub item_cache: ItemCacheConfig,
    pub cache_control: CacheControlConfig,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub keepalive_idle_timeout: Duration,
    pub max_requests_per_connection: u64,
    pub request_deadline: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificate chain and key; `None` means "generate a test CA and certificate in state_dir".
    pub provided: Option<ProvidedCert>,
    pub session_tickets: bool,
    pub session_cache_entries: usize,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ProvidedCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub file: PathBuf,
    pub seed_products: u32,
    pub seed: u64,
    pub statement_cache_capacity: usize,
    pub busy_timeout: Duration,
    pub pool: PoolConfig,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub min_idle: u32,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub default_limit: u32,
    pub max_limit: u32,
    pub detail_fanout_concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct ItemCacheConfig {
    pub max_bytes: u64,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheControlConfig {
    pub products_s_maxage: Duration,
    pub product_s_maxage: Duration,
    pub categories_s_maxage: Duration,
}

impl OriginConfig {
    /// Reads, parses and validates a config file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base) = config_diagnostics::read(path)?;
        Self::from_yaml(&text, &base)
    }

    /// Parses and validates YAML text; relative paths resolve against `base_dir`.
    pub fn from_yaml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig =
            config_diagnostics::parse_yaml_all(text).map_err(ConfigError::Invalid)?;
        validate::validate(file, base_dir).map_err(ConfigError::Invalid)
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> &Path {
        &self.database.file
    }
}
