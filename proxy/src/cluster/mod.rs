//! Several instances acting as one through Redis (`redis:` in the config). `leases.rs`: the
//! cluster-wide token buckets, answered from memory; `link.rs`: the connection and the Redis
//! scripts. [`Cluster`] owns the sync thread (its own small runtime, like the plugin ticker):
//! every `sync_interval` it says this instance is alive, learns how many are, and renews the
//! leases running low. Losing Redis never fails a request: cluster rules fall back to local
//! limits, `edge_cluster_connected` drops to 0 with one log line, and the thread reconnects by
//! itself (one log line when the cluster view is back).

pub mod leases;
pub mod link;
pub mod purges;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::redis::RedisSettings;
use crate::metrics::Metrics;
use crate::purge::{PurgeOrder, Purger};
use leases::{Leases, Limit, Verdict};
use link::Link;
use purges::Acks;

/// What the request path and the sync thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    leases: Leases,
    connected: AtomicBool,
    instances: AtomicU64,
    running: AtomicBool,
    metrics: Arc<Metrics>,
    /// The live link (`None` while Redis is away), for purges sent from the admin listener.
    link: arc_swap::ArcSwapOption<Link>,
    /// Applies the purges of other instances (set once the cache exists).
    purger: OnceLock<Purger>,
}

/// This instance's membership in the cluster.
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    settings: RedisSettings,
    instance: String,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// `edge_cluster_rate_limit_decisions_total`, by [`leases::Decision`] (resolved once: a
    /// label lookup per request is a hash and a lock).
    decisions: [prometheus::IntCounter; 4],
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

impl Cluster {
    /// Starts the sync thread (it connects in the background: a Redis that is down at start is
    /// the same as one lost later).
    pub fn start(settings: RedisSettings, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        let instance = instance_name();
        let shared = Arc::new(Shared {
            leases: Leases::new(settings.sync_interval, settings.on_unavailable),
            connected: AtomicBool::new(false),
            instances: AtomicU64::new(1),
            running: AtomicBool::new(true),
            metrics,
            link: arc_swap::ArcSwapOption::empty(),
            purger: OnceLock::new(),
        });
        shared.metrics.cluster_connected.set(0);
        shared.metrics.cluster_instances.set(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = {
            let (shared, instance, settings) = (shared.clone(), instance.clone(), settings.clone());
            std::thread::Builder::new()
                .name("edge-cluster-sync".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let reader = tokio::spawn(purges::read_loop(
                            settings.clone(),
                            shared.clone(),
                            instance.clone(),
                        ));
                        sync_loop(settings, shared, instance).await;
                        let _ = reader.await;
                    })
                })?
        };
        let decisions = leases::Decision::ALL.map(|decision| {
            shared
                .metrics
                .cluster_rate_limit_decisions
                .with_label_values(&[decision.label()])
        });
        Ok(Arc::new(Self {
            shared,
            settings,
            instance,
            thread: Mutex::new(Some(thread)),
            decisions,
        }))
    }

    /// A request on a cluster rule's bucket `key`: from memory, never waiting on Redis.
    pub fn take(&self, key: &str, limit: Limit) -> Verdict {
        let shared = &*self.shared;
        let verdict = shared.leases.take(
            key,
            limit,
            shared.connected.load(Ordering::Relaxed),
            shared.instances.load(Ordering::Relaxed),
            Instant::now(),
        );
        self.decisions[verdict.decision as usize].inc();
        verdict
    }

    /// Who applies the purges other instances publish (the cache, once it exists).
    pub fn set_purger(&self, purger: Purger) {
        let _ = self.shared.purger.set(purger);
    }

    /// Sends a purge applied here to every other instance; how many applied it in time.
    pub async fn fan_out_purge(&self, order: &PurgeOrder) -> Acks {
        let alive = self.shared.instances.load(Ordering::Relaxed);
        let others = match self.shared.link.load_full() {
            Some(link) => purges::fan_out(&link, &self.settings, &self.instance, alive, order)
                .await
                .inspect_err(
                    |e| tracing::warn!(error = %e, "a purge could not reach the other instances"),
                )
                .ok(),
            None => None,
        };
        Acks {
            acknowledged: others.map_or(1, |n| n + 1),
            alive,
            reached_redis: others.is_some(),
        }
    }
}

fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "edge".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

async fn sync_loop(settings: RedisSettings, shared: Arc<Shared>, instance: String) {
    let interval = settings.sync_interval;
    let horizon = interval * 3 + Duration::from_secs(1);
    let mut lost_logged = false;
    while shared.running.load(Ordering::Relaxed) {
        let started = Instant::now();
        if shared.link.load().is_none() {
            match Link::connect(&settings).await {
                Ok(connected) => shared.link.store(Some(Arc::new(connected))),
                Err(e) => {
                    if !lost_logged {
                        tracing::warn!(error = %e, "cluster view lost: Redis unreachable; cluster rate limits run on local limits ({:?}) until it is back", settings.on_unavailable);
                        lost_logged = true;
                    }
                    set_connected(&shared, false);
                }
            }
        }
        if let Some(current) = shared.link.load_full() {
            match sync_once(&current, &shared, &instance, horizon).await {
                Ok(()) => {
                    if lost_logged || !shared.connected.load(Ordering::Relaxed) {
                        tracing::info!(
                            instances = shared.instances.load(Ordering::Relaxed),
                            "cluster view back: Redis reached, cluster rate limits are cluster-wide again"
                        );
                        lost_logged = false;
                    }
                    set_connected(&shared, true);
                }
                Err(e) => {
                    if !lost_logged {
                        tracing::warn!(error = %e, "cluster view lost; cluster rate limits run on local limits ({:?}) until Redis is back", settings.on_unavailable);
                        lost_logged = true;
                    }
                    set_connected(&shared, false);
                    shared.link.store(None);
                }
            }
        }
        let next = started + interval;
        // Short naps so a stop is noticed quickly even with a long interval.
        while shared.running.load(Ordering::Relaxed) && Instant::now() < next {
            let left = next.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }
}

fn set_connected(shared: &Shared, connected: bool) {
    shared.connected.store(connected, Ordering::Relaxed);
    shared.metrics.cluster_connected.set(i64::from(connected));
}

/// One sync: heartbeat, then every renewal due, concurrently over the multiplexed link.
async fn sync_once(
    link: &Link,
    shared: &Shared,
    instance: &str,
    horizon: Duration,
) -> Result<(), link::LinkError> {
    let commands = &shared.metrics.cluster_redis_commands;
    match link.heartbeat(instance, horizon).await {
        Ok(alive) => {
            commands.with_label_values(&["heartbeat", "ok"]).inc();
            shared.instances.store(alive.max(1), Ordering::Relaxed);
            shared.metrics.cluster_instances.set(alive.max(1) as i64);
        }
        Err(e) => {
            commands.with_label_values(&["heartbeat", "error"]).inc();
            return Err(e);
        }
    }
    let due = shared.leases.due(Instant::now());
    let answers = futures::future::join_all(due.iter().map(|renewal| link.renew(renewal))).await;
    let mut failure = None;
    let now = Instant::now();
    for (renewal, answer) in due.iter().zip(answers) {
        match answer {
            Ok(grant) => {
                commands.with_label_values(&["lease", "ok"]).inc();
                shared.leases.renewed(renewal, Some(grant), now);
            }
            Err(e) => {
                commands.with_label_values(&["lease", "error"]).inc();
                shared.leases.renewed(renewal, None, now);
                failure = Some(e);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}
