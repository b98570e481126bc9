//! A generation: one validated configuration and everything built from it (routes, upstreams,
//! cache policies, plugin VMs, callouts, ticks). The proxy serves the current generation; each
//! request takes the one current when it starts and keeps it to its end, so a reload never
//! changes a request midway, and an old generation is freed when its last request finishes.
//! What outlives generations (the cache, metrics, the plugins' shared data and metric series,
//! the listeners) is owned by the server, not by a generation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::server::configuration::ServerConf;

use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::plugin::callout::Callouts;
use crate::plugin::ticker::Ticker;
use crate::plugin::{PluginError, PluginHost};
use crate::tls::ResumptionState;

/// A TLS listener's rustls config for this generation (its certificates) and the resumption
/// state it shares with the other generations.
#[derive(Debug)]
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub resumption: Arc<ResumptionState>,
}

/// The plugin host and the callout runner the chains use.
#[derive(Debug)]
pub struct Plugins {
    pub host: PluginHost,
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
    /// By listener index (`None`: plain HTTP).
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
        let host = PluginHost::start_after(
            &config.plugins,
            &config.plugin_host,
            metrics,
            previous.map(|p| &p.plugins.host),
        )?;
        let callouts = Arc::new(match previous {
            Some(p) => p.plugins.callouts.with_upstreams(config.upstreams.clone()),
            None => Callouts::new(config.upstreams.clone(), server_conf),
        });
        let ticker = Ticker::start(host.plugins.clone(), callouts.clone())
            .map_err(|e| PluginError::Engine(format!("starting the tick thread: {e}")))?;
        let tls = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, listener)| {
                let settings = listener.tls.as_ref()?;
                let before = previous
                    .and_then(|p| p.tls.get(i))
                    .and_then(Option::as_ref)
                    .map(|t| &t.resumption);
                let resumption = ResumptionState::carry_over(before, &settings.resumption);
                Some(ListenerTls {
                    config: settings.server_config(&resumption),
                    resumption,
                })
            })
            .collect();
        Ok(Self {
            number,
            tls,
            config,
            plugins: Plugins {
                host,
                callouts,
                ticker,
            },
        })
    }
}
