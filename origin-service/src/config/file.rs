//! The serde mirror of `origin.yaml`: every key, its default, unknown keys rejected. Parse errors
//! are reported with the key path that caused them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: String,
    pub state_dir: String,
    pub http: HttpFile,
    pub tls: TlsFile,
    pub database: DatabaseFile,
    pub catalog: CatalogFile,
    pub item_cache: ItemCacheFile,
    pub cache_control: CacheControlFile,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            state_dir: "../.state/origin".into(),
            http: HttpFile::default(),
            tls: TlsFile::default(),
            database: DatabaseFile::default(),
            catalog: CatalogFile::default(),
            item_cache: ItemCacheFile::default(),
            cache_control: CacheControlFile::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFile {
    #[serde(with = "humantime_serde")]
    pub keepalive_idle_timeout: Duration,
    pub max_requests_per_connection: u64,
    #[serde(with = "humantime_serde")]
    pub request_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for HttpFile {
    fn default() -> Self {
        Self {
            keepalive_idle_timeout: Duration::from_secs(75),
            max_requests_per_connection: 0,
            request_deadline: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub session_tickets: bool,
    pub session_cache_entries: usize,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsFile {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            session_tickets: true,
            session_cache_entries: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseFile {
    pub file: String,
    pub seed_products: u32,
    pub seed: u64,
    pub statement_cache_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    pub pool: PoolFile,
}

impl Default for DatabaseFile {
    fn default() -> Self {
        Self {
            file: "catalog.sqlite3".into(),
            seed_products: 50_000,
            seed: 42,
            statement_cache_capacity: 128,
            busy_timeout: Duration::from_secs(1),
            pool: PoolFile::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolFile {
    pub max_connections: u32,
    pub min_idle: u32,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for PoolFile {
    fn default() -> Self {
        Self {
            max_connections: 8,
            min_idle: 2,
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(1800),
            acquire_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogFile {
    pub default_limit: u32,
    pub max_limit: u32,
    pub detail_fanout_concurrency: usize,
}

impl Default for CatalogFile {
    fn default() -> Self {
        Self {
            default_limit: 20,
            max_limit: 200,
            detail_fanout_concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemCacheFile {
    pub max_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for ItemCacheFile {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheControlFile {
    #[serde(with = "humantime_serde")]
    pub products_s_maxage: Duration,
    #[serde(with = "humantime_serde")]
    pub product_s_maxage: Duration,
    #[serde(with = "humantime_serde")]
    pub categories_s_maxage: Duration,
}

impl Default for CacheControlFile {
    fn default() -> Self {
        Self {
            products_s_maxage: Duration::from_secs(30),
            product_s_maxage: Duration::from_secs(60),
            categories_s_maxage: Duration::from_secs(300),
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
    fn empty_document_is_all_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8443");
        assert_eq!(cfg.database.seed_products, 50_000);
    }

    #[test]
    fn unknown_key_is_named_with_its_full_path() {
        let err = parse("database:\n  pool:\n    max_conections: 3\n").unwrap_err();
        assert_eq!(err.path, "database.pool.max_conections");
        assert_eq!(err.problem, "unknown key");
        assert!(err.hint.unwrap().contains("max_connections"));
    }

    #[test]
    fn unknown_top_level_key() {
        let err = parse("colour: blue\n").unwrap_err();
        assert_eq!(err.path, "colour");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let err = parse("http:\n  request_deadline: 5 parsecs\n").unwrap_err();
        assert_eq!(err.path, "http.request_deadline");
        assert!(err.hint.unwrap().contains("250ms"));
    }

    #[test]
    fn wrong_type_names_its_key() {
        let err = parse("database:\n  seed_products: many\n").unwrap_err();
        assert_eq!(err.path, "database.seed_products");
    }
}
