//! `origin-service`: the shirt shop's product-catalog API, the origin the edge proxy fronts.
//!
//! `start` brings up the whole service from a validated [`config::OriginConfig`] and returns a
//! handle, so tests and benchmarks run it in-process on an ephemeral port; `main.rs` is a thin CLI.

pub mod catalog;
pub mod config;
pub mod db;
pub mod http;
pub mod item_cache;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use config::OriginConfig;
use db::{Database, DbError};
use http::Api;
use metrics::Metrics;
use server::tls::{TestPki, TlsError};
use server::{ConnOptions, Shutdown};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running origin: where it listens, which CA signs its certificate, and how to stop it.
#[derive(Debug)]
pub struct RunningOrigin {
    addr: SocketAddr,
    ca_file: Option<PathBuf>,
    products: i64,
    api: Arc<Api>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

impl RunningOrigin {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The generated test CA (None when the config names its own certificate).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Products in the catalog at start.
    pub fn products(&self) -> i64 {
        self.products
    }

    pub fn database(&self) -> &Database {
        self.api.database()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A handle that stops the service from elsewhere (a signal handler, say).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), closes the pool.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.wait().await;
    }

    /// Waits until the service has stopped (after a shutdown from any handle).
    pub async fn wait(self) {
        if let Err(err) = self.task.await {
            tracing::error!(%err, "server task failed");
        }
        self.api.database().close().await;
    }
}

/// The state a start needs, prepared: the catalog and the certificate to serve.
#[derive(Debug, Clone)]
pub struct PreparedState {
    pub products: i64,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The generated test CA (None when the config names its own certificate).
    pub ca_file: Option<PathBuf>,
}

/// Creates, migrates and (if empty) seeds the database, and generates the test CA and server
/// certificate when the config names none. Idempotent; `start` does it too.
pub async fn prepare_state(config: &OriginConfig) -> Result<PreparedState, StartError> {
    let products = db::prepare(&config.database).await?;
    let (cert_file, key_file, ca_file) = match &config.tls.provided {
        Some(provided) => (provided.cert_file.clone(), provided.key_file.clone(), None),
        None => {
            let pki = TestPki::ensure(&config.state_dir.join("tls"))?;
            (pki.server_cert, pki.server_key, Some(pki.ca_cert))
        }
    };
    Ok(PreparedState {
        products,
        cert_file,
        key_file,
        ca_file,
    })
}

/// Prepares the state (see `prepare_state`), TLS and the listener, then serves.
pub async fn start(config: OriginConfig) -> Result<RunningOrigin, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());

    let PreparedState {
        products,
        cert_file: cert,
        key_file: key,
        ca_file,
    } = prepare_state(&config).await?;
    let database = Database::connect(&config.database, metrics.clone()).await?;
    let acceptor = TlsAcceptor::from(server::tls::server_config(&cert, &key, &config.tls)?);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;

    let options = ConnOptions {
        keepalive_idle_timeout: config.http.keepalive_idle_timeout,
        max_requests_per_connection: config.http.max_requests_per_connection,
        tls_handshake_timeout: config.tls.handshake_timeout,
        shutdown_grace: config.http.shutdown_grace,
    };
    let api = Arc::new(Api::new(config.clone(), database, metrics.clone()));
    let (shutdown, stop) = Shutdown::new();
    let handler_api = api.clone();
    let handler = move |request| {
        let api = handler_api.clone();
        async move { api.handle(request).await }
    };
    let task = tokio::spawn(server::serve(
        listener,
        acceptor,
        options,
        metrics.clone(),
        handler,
        stop,
    ));
    tracing::info!(%addr, products, "origin-service listening");
    Ok(RunningOrigin {
        addr,
        ca_file,
        products,
        api,
        metrics,
        shutdown,
        task,
    })
}

/// Replaces the catalog with `products` deterministic products; returns the new count.
pub async fn reseed(config: &OriginConfig, products: u32) -> Result<i64, DbError> {
    let writer = db::open_writer(&config.database).await?;
    db::seed::seed_catalog(&writer, products, config.database.seed).await?;
    let count = db::seed::product_count(&writer).await?;
    writer.close().await;
    Ok(count)
}
