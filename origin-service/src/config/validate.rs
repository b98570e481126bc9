//! Semantic checks on the parsed file: collects EVERY problem as `path: problem (hint)`, then
//! resolves paths against the config file's folder into an `OriginConfig`.

use std::path::Path;

use config_diagnostics::{resolve, Problems};

use super::file::FileConfig;
use super::{
    CacheControlConfig, CatalogConfig, DatabaseConfig, HttpConfig, ItemCacheConfig, OriginConfig,
    PoolConfig, Problem, ProvidedCert, TlsConfig,
};

pub(super) fn validate(file: FileConfig, base_dir: &Path) -> Result<OriginConfig, Vec<Problem>> {
    let mut problems = Problems::default();

    let listen = problems.socket_addr("listen", &file.listen);

    if file.state_dir.trim().is_empty() {
        problems.add("state_dir", "must not be empty", None);
    }
    let state_dir = resolve(base_dir, &file.state_dir);

    let http = &file.http;
    problems.positive("http.keepalive_idle_timeout", http.keepalive_idle_timeout);
    problems.positive("tls.handshake_timeout", file.tls.handshake_timeout);
    problems.positive("http.request_deadline", http.request_deadline);

    let provided = match (&file.tls.cert_file, &file.tls.key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let cert_file = resolve(base_dir, cert);
            let key_file = resolve(base_dir, key);
            for (path, file) in [("tls.cert_file", &cert_file), ("tls.key_file", &key_file)] {
                if !file.is_file() {
                    problems.add(
                        path,
                        format!("file {} does not exist", file.display()),
                        Some("paths are relative to the config file's folder"),
                    );
                }
            }
            Some(ProvidedCert {
                cert_file,
                key_file,
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            let missing = if file.tls.cert_file.is_none() {
                "tls.cert_file"
            } else {
                "tls.key_file"
            };
            problems.add(
                missing,
                "must be set together with the other of tls.cert_file / tls.key_file",
                Some("leave both unset to generate a test CA and certificate in state_dir"),
            );
            None
        }
    };

    let db = &file.database;
    if db.file.trim().is_empty() {
        problems.add("database.file", "must not be empty", None);
    }
    if db.seed_products == 0 {
        problems.add(
            "database.seed_products",
            "must be at least 1",
            Some("the default catalog has 50000 products"),
        );
    }
    let pool = &db.pool;
    if pool.max_connections == 0 {
        problems.add("database.pool.max_connections", "must be at least 1", None);
    }
    if pool.min_idle > pool.max_connections {
        problems.add(
            "database.pool.min_idle",
            format!(
                "{} is more than database.pool.max_connections ({})",
                pool.min_idle, pool.max_connections
            ),
            Some("min_idle <= max_connections"),
        );
    }
    problems.positive("database.pool.acquire_timeout", pool.acquire_timeout);
    problems.positive("database.pool.idle_timeout", pool.idle_timeout);
    problems.positive("database.pool.max_lifetime", pool.max_lifetime);

    let catalog = &file.catalog;
    if catalog.max_limit == 0 {
        problems.add("catalog.max_limit", "must be at least 1", None);
    }
    if catalog.default_limit == 0 || catalog.default_limit > catalog.max_limit {
        problems.add(
            "catalog.default_limit",
            format!(
                "{} is outside 1..={}",
                catalog.default_limit, catalog.max_limit
            ),
            Some("default_limit must lie between 1 and catalog.max_limit"),
        );
    }
    if catalog.detail_fanout_concurrency == 0 {
        problems.add(
            "catalog.detail_fanout_concurrency",
            "must be at least 1",
            Some("1 runs the detail queries one after another"),
        );
    }
    problems.positive("item_cache.ttl", file.item_cache.ttl);

    let listen = match (listen, problems.is_empty()) {
        (Some(listen), true) => listen,
        _ => return Err(problems.into_vec()),
    };

    Ok(OriginConfig {
        listen,
        database: DatabaseConfig {
            file: resolve(&state_dir, &db.file),
            seed_products: db.seed_products,
            seed: db.seed,
            statement_cache_capacity: db.statement_cache_capacity,
            busy_timeout: db.busy_timeout,
            pool: PoolConfig {
                max_connections: pool.max_connections,
                min_idle: pool.min_idle,
                idle_timeout: pool.idle_timeout,
                max_lifetime: pool.max_lifetime,
                acquire_timeout: pool.acquire_timeout,
            },
        },
        state_dir,
        http: HttpConfig {
            keepalive_idle_timeout: http.keepalive_idle_timeout,
            max_requests_per_connection: http.max_requests_per_connection,
            request_deadline: http.request_deadline,
            shutdown_grace: http.shutdown_grace,
        },
        tls: TlsConfig {
            provided,
            session_tickets: file.tls.session_tickets,
            session_cache_entries: file.tls.session_cache_entries,
            handshake_timeout: file.tls.handshake_timeout,
        },
        catalog: CatalogConfig {
            default_limit: catalog.default_limit,
            max_limit: catalog.max_limit,
            detail_fanout_concurrency: catalog.detail_fanout_concurrency,
        },
        item_cache: ItemCacheConfig {
            max_bytes: file.item_cache.max_bytes,
            ttl: file.item_cache.ttl,
        },
        cache_control: CacheControlConfig {
            products_s_maxage: file.cache_control.products_s_maxage,
            product_s_maxage: file.cache_control.product_s_maxage,
            categories_s_maxage: file.cache_control.categories_s_maxage,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::OriginConfig;
    use std::path::Path;

    fn problems(yaml: &str) -> Vec<String> {
        OriginConfig::from_yaml(yaml, Path::new("/etc/origin"))
            .unwrap_err()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let cfg = OriginConfig::from_yaml("state_dir: state\n", Path::new("/etc/origin")).unwrap();
        assert_eq!(cfg.state_dir, Path::new("/etc/origin/state"));
        assert_eq!(
            cfg.database_path(),
            Path::new("/etc/origin/state/catalog.sqlite3")
        );
        let cfg = OriginConfig::from_yaml("state_dir: ../.state/./o\n", Path::new("/etc/origin"))
            .unwrap();
        assert_eq!(cfg.state_dir, Path::new("/etc/.state/o"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(
            "listen: nowhere\n\
             database:\n  pool:\n    max_connections: 2\n    min_idle: 5\n\
             catalog:\n  default_limit: 500\n  detail_fanout_concurrency: 0\n",
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("listen: `nowhere` is not a socket address"));
        assert!(found[1].starts_with("database.pool.min_idle: 5 is more than"));
        assert!(found[2].starts_with("catalog.default_limit: 500 is outside 1..=200"));
        assert!(found[3].starts_with("catalog.detail_fanout_concurrency: must be at least 1"));
    }

    #[test]
    fn cert_without_key_is_rejected_and_missing_files_named() {
        let found = problems("tls:\n  cert_file: server.pem\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("tls.key_file: must be set together"));

        let found = problems("tls:\n  cert_file: nope.pem\n  key_file: nope.key\n");
        assert_eq!(found.len(), 2);
        assert!(found[0].starts_with("tls.cert_file: file /etc/origin/nope.pem does not exist"));
    }

    #[test]
    fn zero_durations_are_rejected() {
        let found = problems("http:\n  request_deadline: 0s\n");
        assert_eq!(
            found,
            vec!["http.request_deadline: must be greater than zero (e.g. 500ms or 5s)"]
        );
    }
}
