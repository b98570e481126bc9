//! The catalog database: a read-only connection pool for serving (sqlx, SQLite, WAL), a
//! short-lived writer for migrations and seeding, and pool acquisition that feeds the metrics.

pub mod seed;

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::config::DatabaseConfig;
use crate::metrics::Metrics;

/// Database failures the service distinguishes.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create state folder {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn base_options(cfg: &DatabaseConfig) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(&cfg.file)
        .busy_timeout(cfg.busy_timeout)
        .statement_cache_capacity(cfg.statement_cache_capacity)
}

/// Opens a single read-write connection, creating and migrating the database if needed.
pub async fn open_writer(cfg: &DatabaseConfig) -> Result<SqlitePool, DbError> {
    if let Some(dir) = cfg.file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DbError::StateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let options = base_options(cfg)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Creates, migrates and (when the catalog is empty) seeds the database; returns products count.
pub async fn prepare(cfg: &DatabaseConfig) -> Result<i64, DbError> {
    let writer = open_writer(cfg).await?;
    let mut count = seed::product_count(&writer).await?;
    if count == 0 {
        tracing::info!(products = cfg.seed_products, "seeding an empty catalog");
        seed::seed_catalog(&writer, cfg.seed_products, cfg.seed).await?;
        count = seed::product_count(&writer).await?;
    }
    writer.close().await;
    Ok(count)
}

/// The serving side: a pool of read-only connections with instrumented acquisition.
#[derive(Debug, Clone)]
pub struct Database {
    pool: SqlitePool,
    metrics: Arc<Metrics>,
}

impl Database {
    /// Opens the read-only pool with the configured knobs; warms `min_idle` connections.
    pub async fn connect(cfg: &DatabaseConfig, metrics: Arc<Metrics>) -> Result<Self, DbError> {
        let options = base_options(cfg).read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(cfg.pool.max_connections)
            .min_connections(cfg.pool.min_idle)
            .idle_timeout(cfg.pool.idle_timeout)
            .max_lifetime(cfg.pool.max_lifetime)
            .acquire_timeout(cfg.pool.acquire_timeout)
            .connect_with(options)
            .await?;
        metrics.pool_max.set(i64::from(cfg.pool.max_connections));
        Ok(Self { pool, metrics })
    }

    /// The underlying pool (tests hold connections from it to exhaust it).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Checks a connection out of the pool, recording waits, latency and timeouts.
    pub async fn acquire(&self) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
        let metrics = &self.metrics;
        if self.pool.num_idle() == 0 {
            metrics.pool_waits.inc();
        }
        let started = Instant::now();
        let result = self.pool.acquire().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(sqlx::Error::PoolTimedOut) => {
                metrics.pool_timeouts.inc();
                "timeout"
            }
            Err(_) => "error",
        };
        metrics
            .pool_acquire_seconds
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            metrics.pool_acquires.inc();
        }
        result
    }

    /// Refreshes the pool gauges (called when /metrics is scraped).
    pub fn observe_pool(&self) {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        self.metrics.pool_idle.set(idle);
        self.metrics.pool_in_use.set((size - idle).max(0));
    }

    /// Closes the pool; further acquires fail with `PoolClosed`.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
