//! Configuration reload without a restart (SIGHUP, `POST /config/reload`, `edge-proxy reload`):
//! the file is re-read and validated as `check` does, every plugin of the new configuration is
//! compiled and configured, and only then is the new generation swapped in for new requests;
//! requests in flight finish on the generation they started with. The cache, metrics and the
//! plugins' shared data are kept. An invalid file changes nothing: every problem is logged and
//! returned, and the running generation serves on.
//!
//! Settings that only take effect at start (listeners, threads, ...) are compared, and each one
//! that differs is reported as needing a restart; the rest of the new file still applies.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use pingora::server::configuration::ServerConf;

use crate::access_log::AccessLog;
use crate::config::{self, ConfigError, RuntimeConfig};
use crate::generation::{Current, Generation};
use crate::metrics::Metrics;
use crate::plugin::PluginError;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy was not started from a config file: nothing to reload")]
    NoSource,
    #[error("{0}")]
    Invalid(ConfigError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl ReloadError {
    /// Every problem, one per line, as `check` prints them.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(ConfigError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// What an applied reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// `key: running -> in file` for each start-only setting that differs (not applied).
    pub restart_required: Vec<String>,
}

/// Rebuilds and swaps generations; one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    source: Option<PathBuf>,
    current: Current,
    metrics: Arc<Metrics>,
    server_conf: Arc<ServerConf>,
    /// Reopened on every reload (log rotation: rename the file, then reload).
    access_log: AccessLog,
    /// Held for a whole reload: SIGHUP and the admin endpoint never interleave.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: Option<PathBuf>,
        current: Current,
        metrics: Arc<Metrics>,
        server_conf: Arc<ServerConf>,
        access_log: AccessLog,
    ) -> Self {
        metrics
            .config_generation
            .set(i64::try_from(current.load().number).unwrap_or(i64::MAX));
        Self {
            source,
            current,
            metrics,
            server_conf,
            access_log,
            busy: Mutex::new(()),
        }
    }

    /// Re-reads the config file and swaps in a new generation if it is valid and every plugin
    /// starts. Blocking (modules may compile): call it off the request path.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        // Whether or not the new file is valid: a rotated log is reopened either way.
        if let Err(e) = self.access_log.reopen() {
            tracing::warn!(error = %e, "reload: cannot reopen the access log file; writing on to the old one");
        }
        let outcome = self.try_reload();
        let result = match &outcome {
            Ok(done) => {
                for setting in &done.restart_required {
                    tracing::warn!(%setting, "reload: this setting changes only on a restart (or an upgrade); the running value stays");
                }
                tracing::info!(
                    generation = done.generation,
                    "reload: configuration applied"
                );
                "applied"
            }
            Err(e) => {
                for problem in e.problems() {
                    tracing::error!(%problem, "reload refused: the running configuration stays");
                }
                match e {
                    ReloadError::Invalid(_) | ReloadError::NoSource => "invalid",
                    ReloadError::Plugin(_) => "plugin_failed",
                }
            }
        };
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        outcome
    }

    fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let config = Arc::new(config::load(source).map_err(ReloadError::Invalid)?);
        let previous = self.current.load_full();
        let restart_required = restart_only_changes(&previous.config, &config);
        let next = Generation::build(
            previous.number + 1,
            config,
            self.metrics.clone(),
            &self.server_conf,
            Some(&previous),
        )?;
        let generation = next.number;
        self.current.store(Arc::new(next));
        self.metrics
            .config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        // The old generation's VMs live on for the requests still using it; its ticks stop now.
        previous.plugins.ticker.stop();
        Ok(Reloaded {
            generation,
            restart_required,
        })
    }
}

fn changed<T: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    key: &str,
    running: &T,
    file: &T,
) {
    if running != file {
        out.push(format!("{key}: {running:?} -> {file:?}"));
    }
}

/// The start-only settings that differ between the running config and a reloaded one.
pub fn restart_only_changes(running: &RuntimeConfig, file: &RuntimeConfig) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (&running.server, &file.server);
    // Addresses and whether each speaks TLS are sockets and services; certificates reload.
    let shape = |c: &RuntimeConfig| -> Vec<String> {
        c.listeners
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l.address,
                    if l.tls.is_some() { "https" } else { "http" }
                )
            })
            .collect()
    };
    changed(&mut out, "listen/listeners", &shape(running), &shape(file));
    changed(
        &mut out,
        "admin.listen",
        &running.admin_listen,
        &file.admin_listen,
    );
    changed(&mut out, "server.threads", &a.threads, &b.threads);
    changed(
        &mut out,
        "access_log",
        &running.access_log,
        &file.access_log,
    );
    changed(
        &mut out,
        "downstream.header_read_timeout",
        &running.downstream.header_read_timeout,
        &file.downstream.header_read_timeout,
    );
    changed(
        &mut out,
        "downstream.max_connections",
        &running.downstream.max_connections,
        &file.downstream.max_connections,
    );
    changed(
        &mut out,
        "downstream.max_requests_per_connection",
        &running.downstream.max_requests_per_connection,
        &file.downstream.max_requests_per_connection,
    );
    changed(
        &mut out,
        "downstream.h2",
        &running.downstream.h2,
        &file.downstream.h2,
    );
    // The link to Redis is one per process, made at start.
    changed(&mut out, "redis", &running.redis, &file.redis);
    changed(
        &mut out,
        "server.work_stealing",
        &a.work_stealing,
        &b.work_stealing,
    );
    changed(
        &mut out,
        "server.write_buffer",
        &a.write_buffer,
        &b.write_buffer,
    );
    changed(
        &mut out,
        "server.upgrade_sock",
        &a.upgrade_sock,
        &b.upgrade_sock,
    );
    changed(
        &mut out,
        "server.upgrade_timeout",
        &a.upgrade_timeout,
        &b.upgrade_timeout,
    );
    changed(
        &mut out,
        "server.grace_period",
        &a.grace_period,
        &b.grace_period,
    );
    changed(
        &mut out,
        "server.graceful_shutdown_timeout",
        &a.graceful_shutdown_timeout,
        &b.graceful_shutdown_timeout,
    );
    changed(
        &mut out,
        "cache.max_bytes",
        &running.cache_max_bytes,
        &file.cache_max_bytes,
    );
    changed(
        &mut out,
        "upstreams.*.tls.ca_file",
        &running.upstream_ca_file,
        &file.upstream_ca_file,
    );
    changed(
        &mut out,
        "upstreams.*.pool_size (sum)",
        &running.keepalive_pool_size,
        &file.keepalive_pool_size,
    );
    out
}

/// Reloads on every SIGHUP, on a thread of its own (the handler is installed before this
/// returns, so a SIGHUP never takes the default action of ending the process).
pub fn reload_on_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hangups = {
        let _entered = runtime.enter();
        signal(SignalKind::hangup())?
    };
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            runtime.block_on(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let reloader = reloader.clone();
                    // Compiling modules blocks: off this runtime's only thread.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "upstreams:\n  u: { addresses: [127.0.0.1:9] }\nroutes:\n  - { name: r, path_prefix: /, upstream: u }\n";

    fn compile(yaml: &str) -> RuntimeConfig {
        config::from_yaml(yaml, Path::new("/tmp")).unwrap()
    }

    #[test]
    fn start_only_settings_that_differ_are_named() {
        let running = compile(BASE);
        assert!(restart_only_changes(&running, &compile(BASE)).is_empty());
        let moved = compile(&format!(
            "listen: 127.0.0.1:8081\nserver: {{ threads: 4 }}\ncache: {{ max_bytes: 2097152 }}\n{BASE}"
        ));
        let changes = restart_only_changes(&running, &moved);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            changes[0],
            r#"listen/listeners: ["127.0.0.1:8080 http"] -> ["127.0.0.1:8081 http"]"#
        );
        assert!(changes[1].starts_with("server.threads: 2 -> 4"));
        assert!(changes[2].starts_with("cache.max_bytes:"));
    }
}
