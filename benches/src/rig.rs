//! What every benchmark binary sets up the same way: a free loopback port, an in-process proxy
//! from a few lines of YAML, alternating measured rounds with their table, and the runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_proxy::RunningProxy;
use origin_service::config::OriginConfig;
use origin_service::RunningOrigin;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use crate::cpu;
use crate::load::{self, LoadSpec};
use crate::report::{self, Series};

/// The load knobs every benchmark takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent keep-alive connections (closed loop: one request in flight each).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Unmeasured warm-up seconds per round.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Rounds per target, alternating targets.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Open-loop ("same traffic") rounds after the capacity rounds.
#[derive(Debug, Clone, clap::Args)]
pub struct PacedArgs {
    /// Offered load of the open-loop rounds, as a fraction of the baseline's measured capacity
    /// (0 skips them). Latency is compared at the same offered load, as production sees it.
    #[arg(long, default_value_t = 0.5)]
    pub paced_load: f64,
}

impl LoadArgs {
    /// Load on `path` at `addr` (TLS to `localhost` when `tls` is given).
    pub fn spec(
        &self,
        addr: SocketAddr,
        path: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> anyhow::Result<LoadSpec> {
        Ok(LoadSpec {
            addr,
            server_name: ServerName::try_from("localhost")?,
            path_and_query: path.to_string(),
            connections: self.connections,
            warmup: Duration::from_secs(self.warmup),
            duration: Duration::from_secs(self.seconds),
            tls,
            rate: None,
            headers: Vec::new(),
            mix: Vec::new(),
            transport: crate::load::Transport::KeepAlive,
        })
    }

    /// "16 connections, 8s measured after 2s warm-up, 3 rounds"
    pub fn describe(&self) -> String {
        format!(
            "{} connections, {}s measured after {}s warm-up, {} rounds",
            self.connections, self.seconds, self.warmup, self.rounds
        )
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An origin started for a benchmark, with the config it runs and the CA that signs it.
#[derive(Debug)]
pub struct BenchOrigin {
    pub origin: RunningOrigin,
    pub config: OriginConfig,
    pub ca: PathBuf,
}

/// Starts an origin on a free port with its state in `dir`; `settings` is YAML added to
/// `listen` and `state_dir` (e.g. `database: { seed_products: 500 }`).
pub async fn start_origin(dir: &Path, settings: &str) -> anyhow::Result<BenchOrigin> {
    let path = dir.join("origin.yaml");
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:0\nstate_dir: state\n{settings}\n"),
    )?;
    let config = OriginConfig::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let origin = origin_service::start(config.clone()).await?;
    let ca = origin
        .ca_file()
        .context("the origin generated no CA")?
        .to_path_buf();
    Ok(BenchOrigin { origin, config, ca })
}

/// An origin seeded with `products` whose listings stay fresh for an hour: what the cache
/// benchmarks put behind the edge.
pub async fn start_cacheable_origin(dir: &Path, products: u32) -> anyhow::Result<BenchOrigin> {
    start_origin(
        dir,
        &format!(
            "database: {{ seed_products: {products} }}\ncache_control: {{ products_s_maxage: 1h }}"
        ),
    )
    .await
}

/// Starts a proxy on free ports with the given `upstreams:` body, `routes:` body and extra
/// top-level YAML (e.g. `cache: {...}`); its upgrade socket lives in `dir`.
pub fn start_proxy(
    dir: &Path,
    upstreams: &str,
    routes: &str,
    extra: &str,
) -> anyhow::Result<RunningProxy> {
    let yaml = format!(
        "server: {{ threads: 2, work_stealing: {ws}, grace_period: 0s, graceful_shutdown_timeout: 1s, upgrade_sock: {sock} }}\n\
         listen: 127.0.0.1:{listen}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n\
         access_log: {access_log}\n\
         upstreams:\n{upstreams}\nroutes:\n{routes}\n{extra}\n",
        sock = dir.join("upgrade.sock").display(),
        // On, as shipped, into a file (as NGINX's access log in the peers harness).
        access_log = dir.join("access.log").display(),
        ws = std::env::var("EDGE_BENCH_WORK_STEALING").unwrap_or_else(|_| "true".into()),
        listen = free_port()?,
        admin = free_port()?,
    );
    let config = edge_proxy::config::from_yaml(&yaml, dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(RunningProxy::start(config)?)
}

/// Runs `rounds` rounds, each target once per round, printing the table as it goes; returns
/// one series per target. Each round starts one target further on (round 2 starts with the
/// second target), so no target always runs right after the same other one.
pub async fn alternate(
    rounds: usize,
    targets: &[(&str, &LoadSpec)],
) -> anyhow::Result<Vec<Series>> {
    println!("{}", report::header());
    let mut series: Vec<Series> = targets.iter().map(|(name, _)| Series::new(name)).collect();
    for round in 1..=rounds {
        for offset in 0..targets.len() {
            let index = (round - 1 + offset) % targets.len();
            let spec = targets[index].1.clone();
            // CPU over the measured window: from the end of the warm-up to the end of the run.
            let warmup = spec.warmup;
            let before = tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                cpu::snapshot()
            });
            let result = load::run(spec).await?;
            let usage = cpu::Usage::between(&before.await?, &cpu::snapshot());
            let s = &mut series[index];
            println!("{}", report::row(&s.name, round, &result));
            s.rounds.push(result);
            s.cpu.push(usage);
        }
    }
    Ok(series)
}

/// A multi-threaded runtime running `main` to completion.
pub fn run<F: Future<Output = anyhow::Result<()>>>(main: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main)
}
