//! A generation: one validated configuration and everything built from it (routes, upstreams,
//! cache policies, plugin VMs, callouts, ticks). The proxy serves the current generation; each
//! request takes the one current when it starts and keeps it to its end, so a reload never
//! changes a request midway, and an old generation is freed when its last request finishes.
//! What outlives generations (the cache, metrics, the plugins' shared data and metric series,
//! the listeners) is owned by the server, not by a generation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;

use crate::cluster::Cluster;
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::plugin::callout::Callouts;
use crate::plugin::ticker::Ticker;
use crate::plugin::{PluginError, PluginHost};
use crate::tls::ResumptionState;

/// A TLS listener's rustls config for this generation (its certificates) and the resumption
/// state it shares with the other generations.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub resumption: Arc<ResumptionState>,
}

/// The plugin host and the callout runner the chains use.
#[derive(Debug)]
pub struct Plugins {
    pub host: PluginHost,
    /// The link to the other instances (`redis:`), one per process: handed from generation
    /// to generation.
    pub cluster: Option<Arc<Cluster>>,
    pub callouts: Arc<Callouts>,
    /// Delivers `on_tick`; stopped when the generation is replaced.
    pub ticker: Ticker,
}

#[derive(Debug)]
pub struct Generation {
    /// 1 for the configuration the process started with, +1 per applied reload.
    pub number: u64,
    pub config: Arc<RuntimeConfig>,
    pub plugins: Plugins,
    /// The listeners the process serves (those it started with: a reload cannot move a
    /// socket), and each one's TLS by the same index (`None`: plain HTTP).
    pub listeners: Vec<std::net::SocketAddr>,
    pub tls: Vec<Option<ListenerTls>>,
}

/// The generation new requests get, swapped atomically by a reload.
pub type Current = Arc<ArcSwap<Generation>>;

impl Generation {
    /// Builds every part that can fail (modules compiled, every VM started and configured, the
    /// tick thread), so a generation that exists is one that can serve. `previous` hands over
    /// what plugins share across generations (shared data, metric series) and the callouts'
    /// connection pool.
    pub fn build(
        number: u64,
        config: Arc<RuntimeConfig>,
        metrics: Arc<Metrics>,
        server_conf: &ServerConf,
        previous: Option<&Generation>,
    ) -> Result<Self, PluginError> {
        let cluster = match previous {
            Some(previous) => previous.plugins.cluster.clone(),
            None => match &config.redis {
                Some(redis) => {
                    Some(Cluster::start(redis.clone(), metrics.clone()).map_err(|e| {
                        PluginError::Engine(format!("starting the cluster sync thread: {e}"))
                    })?)
                }
                None => None,
            },
        };
        let host = PluginHost::start_after(
            &config.plugins,
            &config.plugin_host,
            metrics,
            previous.map(|p| &p.plugins.host),
            cluster.clone(),
        )?;
        let callouts = Arc::new(match previous {
            Some(p) => p.plugins.callouts.with_upstreams(config.upstreams.clone()),
            None => Callouts::new(config.upstreams.clone(), server_conf),
        });
        let ticker = Ticker::start(host.plugins.clone(), callouts.clone())
            .map_err(|e| PluginError::Engine(format!("starting the tick thread: {e}")))?;
        let (listeners, tls) = listener_tls(&config, previous);
        Ok(Self {
            number,
            listeners,
            tls,
            config,
            plugins: Plugins {
                host,
                cluster,
                callouts,
                ticker,
            },
        })
    }
}

/// Each served listener's TLS under `config`. The listeners stay the ones the process started
/// with; a listener keeps its TLS settings when the new file drops it or makes it plain
/// (restart-only changes, reported by the reload), takes the file's settings for the same
/// address otherwise, and a plain one stays plain. Resumption state carries over.
fn listener_tls(
    config: &RuntimeConfig,
    previous: Option<&Generation>,
) -> (Vec<std::net::SocketAddr>, Vec<Option<ListenerTls>>) {
    let Some(previous) = previous else {
        let tls = config
            .listeners
            .iter()
            .map(|listener| {
                let settings = listener.tls.as_ref()?;
                let resumption = ResumptionState::new(&settings.resumption);
                Some(ListenerTls {
                    config: settings.server_config(&resumption),
                    resumption,
                })
            })
            .collect();
        return (config.listeners.iter().map(|l| l.address).collect(), tls);
    };
    let tls = previous
        .listeners
        .iter()
        .zip(&previous.tls)
        .map(|(address, before)| {
            let before = before.as_ref()?;
            let settings = config
                .listeners
                .iter()
                .find(|l| l.address == *address)
                .and_then(|l| l.tls.as_ref());
            let Some(settings) = settings else {
                return Some(before.clone());
            };
            let resumption =
                ResumptionState::carry_over(Some(&before.resumption), &settings.resumption);
            Some(ListenerTls {
                config: settings.server_config(&resumption),
                resumption,
            })
        })
        .collect();
    (previous.listeners.clone(), tls)
}
