//! `edge-proxy`: a Pingora reverse proxy in front of the product-catalog origin.
//!
//! `build_server` turns a validated [`config::RuntimeConfig`] into a Pingora `Server` (data plane
//! and admin listener); [`RunningProxy`] runs one on a thread with a stop handle, so tests and
//! benchmarks start a proxy without `main()`.

pub mod admin;
pub mod cache;
pub mod config;
pub mod ctx;
pub mod edge;
pub mod errors;
pub mod hygiene;
pub mod metrics;
pub mod plugin;
pub mod routing;
pub mod upstream;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::sync::{oneshot, Mutex};

use config::RuntimeConfig;
use metrics::Metrics;

/// A cache lock older than this is considered abandoned (its writer died): waiters take over.
const CACHE_LOCK_AGE: Duration = Duration::from_secs(10);

/// Builds the Pingora server: the proxy service on `listen`, the admin app on `admin_listen`.
/// `upgrade` takes the listening sockets over from a running instance (graceful upgrade).
pub fn build_server(
    config: Arc<RuntimeConfig>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    upgrade: bool,
) -> Result<Server, plugin::PluginError> {
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), config.server_conf());
    server.bootstrap();

    let cache = cache::storage::MokaStorage::leak(config.cache_max_bytes);
    let cache_lock: &'static pingora::cache::lock::CacheKeyLockImpl =
        Box::leak(pingora::cache::lock::CacheLock::new_boxed(CACHE_LOCK_AGE));
    let plugins = Arc::new(plugin::PluginHost::start(
        &config.plugins,
        &config.plugin_host,
        metrics.clone(),
    )?);
    let callouts = Arc::new(plugin::callout::Callouts::new(
        config.upstreams.clone(),
        &server.configuration,
    ));
    let proxy = edge::EdgeProxy::new(
        config.clone(),
        metrics.clone(),
        cache,
        cache_lock,
        edge::Plugins {
            ticker: Arc::new(
                plugin::ticker::Ticker::start(plugins.plugins.clone(), callouts.clone()).map_err(
                    |e| plugin::PluginError::Engine(format!("starting the tick thread: {e}")),
                )?,
            ),
            host: plugins,
            callouts,
        },
    );
    let mut data_plane =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "edge-proxy");
    data_plane.add_listener(
        ListenerConfig::tcp(config.listen.to_string())
            .l4_buffer(L4BufferSettings::default().write(config.server.write_buffer)),
    );

    let admin_app = admin::AdminApp::new(config.clone(), metrics, draining, cache);
    let mut admin = Service::new("admin".to_string(), admin_app);
    admin.threads = Some(1);
    admin.add_tcp(&config.admin_listen.to_string());

    server.add_service(data_plane);
    server.add_service(admin);
    Ok(server)
}

/// Shutdown requests from Unix signals (SIGTERM graceful, SIGINT fast, SIGQUIT graceful
/// upgrade) and/or a channel; marks the proxy as draining before Pingora acts on it.
#[derive(Debug)]
pub struct StopSignals {
    channel: Mutex<Option<oneshot::Receiver<ShutdownSignal>>>,
    unix: bool,
    draining: Arc<AtomicBool>,
}

impl StopSignals {
    pub fn new(
        channel: Option<oneshot::Receiver<ShutdownSignal>>,
        unix: bool,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Self {
            channel: Mutex::new(channel),
            unix,
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
        if !self.unix {
            return std::future::pending().await;
        }
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
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
    Plugin(#[from] plugin::PluginError),
}

/// A proxy running on its own thread (Pingora makes its own runtimes), stopped on demand.
#[derive(Debug)]
pub struct RunningProxy {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningProxy {
    /// Starts the proxy and waits until both listeners accept connections.
    pub fn start(config: RuntimeConfig) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        let draining = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = oneshot::channel();
        let (listen, admin) = (config.listen, config.admin_listen);
        let server = build_server(config, metrics.clone(), draining.clone(), false)?;
        let signals = StopSignals::new(Some(stop_rx), false, draining);
        let thread = std::thread::Builder::new()
            .name("edge-proxy".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signals),
                })
            })?;
        let running = Self {
            listen,
            admin,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        };
        let limit = Duration::from_secs(10);
        for addr in [listen, admin] {
            let started = Instant::now();
            while TcpStream::connect(addr).is_err() {
                if started.elapsed() > limit {
                    return Err(StartError::NotListening(addr, limit));
                }
                std::thread::sleep(Duration::from_millis(10));
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
