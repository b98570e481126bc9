//! `edge-proxy`: a Pingora reverse proxy in front of the product-catalog origin.
//!
//! `build_server` turns a validated [`config::RuntimeConfig`] into a Pingora `Server` (data plane
//! and admin listener); [`RunningProxy`] runs one on a thread with a stop handle, so tests and
//! benchmarks start a proxy without `main()`.

pub mod access_log;
pub mod admin;
pub mod answers;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod ctx;
pub mod edge;
pub mod errors;
pub mod framing;
pub mod generation;
pub mod header_deadline;
pub mod hygiene;
pub mod listening;
pub mod metrics;
pub mod normalize;
pub mod plugin;
pub mod profiling;
pub mod purge;
pub mod reload;
pub mod routing;
pub mod tls;
pub mod upgrade;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::sync::{oneshot, Mutex};

use access_log::AccessLog;
use config::RuntimeConfig;
use metrics::Metrics;

/// A cache lock older than this is considered abandoned (its writer died): waiters take over.
const CACHE_LOCK_AGE: Duration = Duration::from_secs(10);

/// How a server is built.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Take the listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
    /// The config file the configuration came from: what a reload re-reads (`None`: reloads
    /// are refused).
    pub source: Option<PathBuf>,
}

/// A built server and the handle that reloads its configuration.
#[allow(missing_debug_implementations)] // Pingora's `Server` has no Debug
pub struct Built {
    pub server: Server,
    pub reloader: Arc<reload::Reloader>,
    /// Flush it once the server has stopped: the last lines are still buffered then.
    pub access_log: AccessLog,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plugin(#[from] plugin::PluginError),
    #[error("access_log: cannot open {destination}: {source}")]
    AccessLog {
        destination: access_log::Destination,
        source: std::io::Error,
    },
}

/// Builds the Pingora server: the proxy service on `listen`, the admin app on `admin_listen`.
pub fn build_server(
    config: Arc<RuntimeConfig>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    options: BuildOptions,
) -> Result<Built, BuildError> {
    let access_log =
        AccessLog::open(&config.access_log).map_err(|source| BuildError::AccessLog {
            destination: config.access_log.clone(),
            source,
        })?;
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), config.server_conf());

    // Everything that can fail (modules, `on_configure`, the tick thread) is loaded BEFORE
    // `bootstrap`, which takes the listening sockets (from the old process on an upgrade): a new
    // process that cannot start must leave the old one serving.
    let first = generation::Generation::build(
        1,
        config.clone(),
        metrics.clone(),
        &server.configuration,
        None,
    )?;
    let current: generation::Current = Arc::new(arc_swap::ArcSwap::from_pointee(first));
    let reloader = Arc::new(reload::Reloader::new(
        options.source,
        current.clone(),
        metrics.clone(),
        server.configuration.clone(),
        access_log.clone(),
    ));
    server.bootstrap();

    let client_tls = Arc::new(tls::client::ClientTlsTable::default());
    let cache = cache::storage::MokaStorage::leak(config.cache_max_bytes);
    // One purger for this cache: the admin endpoint's purges, and with `redis:` the ones the
    // other instances publish.
    let purger = purge::Purger::new(current.clone(), cache, metrics.clone());
    if let Some(cluster) = &current.load().plugins.cluster {
        cluster.set_purger(purger.clone());
    }
    let cache_lock: &'static pingora::cache::lock::CacheKeyLockImpl =
        Box::leak(pingora::cache::lock::CacheLock::new_boxed(CACHE_LOCK_AGE));
    let proxy = edge::EdgeProxy::new(
        current.clone(),
        draining.clone(),
        metrics.clone(),
        cache,
        cache_lock,
        access_log.clone(),
        client_tls.clone(),
    );
    let mut http = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut options = pingora::apps::HttpServerOptions::default();
    // Pingora counts reuses: a limit of N serves N + 1 requests on a connection.
    options.keepalive_request_limit = Some(
        config
            .downstream
            .max_requests_per_connection
            .saturating_sub(1),
    );
    options.h2_idle_timeout = Some(config.downstream.keepalive_timeout);
    http.server_options = Some(options);
    http.h2_options = Some(h2_options(&config.downstream.h2));
    let gate = connections::ConnectionGate::new(config.downstream.max_connections, metrics.clone());
    let terminator = tls::handshake::Terminator::new(
        config
            .listeners
            .iter()
            .map(|l| tls::handshake::ListenerAddress {
                address: l.address,
                tls: l.tls.is_some(),
            })
            .collect(),
        current.clone(),
        client_tls,
        metrics.clone(),
        config.downstream.header_read_timeout,
    );
    let mut data_plane = Service::new(
        "edge-proxy".to_string(),
        connections::Counted::new(
            http,
            gate.clone(),
            config.downstream.header_read_timeout,
            terminator,
        ),
    );
    data_plane.set_connection_filter(Arc::new(connections::GateFilter(gate)));
    // Every listener is plain TCP to Pingora: TLS is terminated in `Counted`, with our own
    // rustls settings (versions, tickets, client certificates, reloadable certificates).
    for listener in &config.listeners {
        data_plane.add_listener(
            ListenerConfig::tcp(listener.address.to_string())
                .l4_buffer(L4BufferSettings::default().write(config.server.write_buffer)),
        );
    }

    let admin_app =
        admin::AdminApp::new(current, reloader.clone(), metrics, draining, cache, purger);
    let mut admin = Service::new("admin".to_string(), admin_app);
    admin.threads = Some(1);
    admin.add_tcp(&config.admin_listen.to_string());

    server.add_service(data_plane);
    server.add_service(admin);
    Ok(Built {
        server,
        reloader,
        access_log,
    })
}

/// The HTTP/2 server settings for clients: Pingora's bounded defaults with ours on top.
fn h2_options(limits: &config::H2Limits) -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .initial_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_pending_accept_reset_streams(limits.max_pending_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_resets));
    options
}

/// Shutdown requests from Unix signals (SIGTERM graceful, SIGINT fast, SIGQUIT graceful
/// upgrade) and/or a channel; marks the proxy as draining before Pingora acts on it.
#[derive(Debug)]
pub struct StopSignals {
    channel: Mutex<Option<oneshot::Receiver<ShutdownSignal>>>,
    /// Unix signals are watched when set: the upgrade socket and how long a SIGQUIT waits for
    /// a successor to listen on it.
    unix: Option<(PathBuf, Duration)>,
    draining: Arc<AtomicBool>,
}

impl StopSignals {
    /// Stops on `channel` only (tests, benchmarks).
    pub fn channel(channel: oneshot::Receiver<ShutdownSignal>, draining: Arc<AtomicBool>) -> Self {
        Self {
            channel: Mutex::new(Some(channel)),
            unix: None,
            draining,
        }
    }

    /// Stops on Unix signals; a SIGQUIT hands the sockets over only once a successor listens on
    /// `upgrade_sock` (waiting up to `upgrade_timeout`), else it is refused and serving goes on.
    pub fn unix(
        upgrade_sock: PathBuf,
        upgrade_timeout: Duration,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Self {
            channel: Mutex::new(None),
            unix: Some((upgrade_sock, upgrade_timeout)),
            draining,
        }
    }

    async fn channel_signal(&self) -> ShutdownSignal {
        let receiver = self.channel.lock().await.take();
        match receiver {
            Some(rx) => rx.await.unwrap_or(ShutdownSignal::GracefulTerminate),
            None => std::future::pending().await,
        }
    }

    async fn unix_signal(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let Some((upgrade_sock, upgrade_timeout)) = &self.unix else {
            return std::future::pending().await;
        };
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if upgrade::wait_for_successor(upgrade_sock, *upgrade_timeout).await {
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    tracing::error!(
                        upgrade_sock = %upgrade_sock.display(),
                        "SIGQUIT: no new process listened on the upgrade socket within {upgrade_timeout:?} \
                         (did `edge-proxy run --upgrade` fail to start?): keeping the sockets and serving on"
                    );
                }
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for StopSignals {
    async fn recv(&self) -> ShutdownSignal {
        let signal = tokio::select! {
            s = self.channel_signal() => s,
            s = self.unix_signal() => s,
        };
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(?signal, "shutdown requested: draining");
        signal
    }
}

/// Why a proxy could not be started in-process.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the proxy did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
    #[error("cannot start the proxy thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// A proxy running on its own thread (Pingora makes its own runtimes), stopped on demand.
#[derive(Debug)]
pub struct RunningProxy {
    /// The first data-plane listener.
    pub listen: SocketAddr,
    /// Every data-plane listener, in config order (`listen` first).
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// Reloads the config file the proxy started from (refused without one).
    pub reloader: Arc<reload::Reloader>,
    stop: Option<oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningProxy {
    /// Starts the proxy and waits until both listeners accept connections.
    pub fn start(config: RuntimeConfig) -> Result<Self, StartError> {
        Self::start_with(config, BuildOptions::default())
    }

    /// Starts the proxy from a config file, which [`Self::reloader`] re-reads.
    pub fn start_from_file(path: &std::path::Path) -> Result<Self, StartError> {
        let config = config::load(path)?;
        Self::start_with(
            config,
            BuildOptions {
                source: Some(path.to_path_buf()),
                ..BuildOptions::default()
            },
        )
    }

    fn start_with(config: RuntimeConfig, options: BuildOptions) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let draining = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = oneshot::channel();
        let (listen, admin) = (config.listen, config.admin_listen);
        let listeners: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
        let Built {
            server,
            access_log,
            reloader,
        } = build_server(config, metrics.clone(), draining.clone(), options)?;
        let signals = StopSignals::channel(stop_rx, draining);
        let thread = std::thread::Builder::new()
            .name("edge-proxy".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signals),
                });
                access_log.flush();
            })?;
        let running = Self {
            listen,
            listeners: listeners.clone(),
            admin,
            metrics,
            reloader,
            stop: Some(stop),
            thread: Some(thread),
        };
        // Read from the kernel's tables: a probe connection would be a failed TLS handshake.
        let limit = Duration::from_secs(10);
        for addr in listeners.into_iter().chain([admin]) {
            if !listening::wait_for_tcp(addr, limit) {
                return Err(StartError::NotListening(addr, limit));
            }
        }
        Ok(running)
    }

    /// Graceful stop: listeners close, in-flight requests finish, then the runtimes end.
    pub fn stop(mut self) {
        self.shutdown(ShutdownSignal::GracefulTerminate);
    }

    fn shutdown(&mut self, signal: ShutdownSignal) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(signal);
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the proxy thread panicked");
            }
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.shutdown(ShutdownSignal::FastShutdown);
    }
}
