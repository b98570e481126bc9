//! What a cluster-scoped rate-limit rule costs against a local one: two proxies in this
//! process, the same cache-hit route behind the rate-limit plugin, one rule `scope: local`
//! (the host's shared data), the other `scope: cluster` (leases from a real `redis-server`
//! started here on a loopback port, persistence off). The rules' limits are far above the load,
//! so both allow every request and only the bookkeeping differs. Alternating rounds report
//! throughput, latency and CPU per request of each proxy's worker threads; then, at a fixed
//! offered load spread over three cluster instances, the Redis commands per second they send (its own counters and
//! Redis's `INFO commandstats`) against the design's bound, one renewal per bucket per sync
//! interval plus one heartbeat, and the rule's decisions (leased, on debt, refused).
//!
//! `cargo run --release -p edge-benches --bin cluster-limit -- --rounds 5`

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use edge_benches::{load, report, rig};
use edge_proxy::RunningProxy;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    load: rig::LoadArgs,
    /// Products the origin is seeded with.
    #[arg(long, default_value_t = 200)]
    products: u32,
    /// Offered load (requests per second) of the Redis-operations run.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

const PATH: &str = "/api/v1/products?category=polo&limit=20";
const SYNC_INTERVAL_MS: u64 = 100;

/// A `redis-server` child on a loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    async fn start() -> anyhow::Result<Self> {
        let port = rig::free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server (`make setup` installs it)")?;
        let redis = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.command_calls().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    /// Calls per command so far (`INFO commandstats`; the commands a script runs inside are
    /// listed under their own names too), `info`'s own left out.
    async fn command_calls(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let info: redis::InfoDict = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await?;
        // `cmdstat_evalsha:calls=20,usec=...,...`
        Ok(info
            .iter()
            .filter_map(|(key, stats)| {
                let name = key.strip_prefix("cmdstat_")?;
                let stats: String = redis::from_redis_value(stats.clone()).ok()?;
                let calls = stats.split("calls=").nth(1)?.split(',').next()?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .filter(|(name, _)| name != "info")
            .collect())
    }
}

/// Calls per second of each command between two `command_calls` readings.
fn rates(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    seconds: f64,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, calls)| {
            let was = before.get(name).copied().unwrap_or(0);
            (name.clone(), calls.saturating_sub(was) as f64 / seconds)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect()
}

fn proxy(
    dir: &Path,
    origin: std::net::SocketAddr,
    ca: &Path,
    scope: &str,
    redis: u16,
) -> anyhow::Result<RunningProxy> {
    std::fs::create_dir_all(dir)?;
    let module = std::fs::canonicalize("plugins/target/wasm32-wasip1/release/rate_limit.wasm")
        .context("the rate-limit plugin (run `make plugins`)")?;
    rig::start_proxy(
        dir,
        &format!(
            "  catalog:\n    addresses: [{origin}]\n    tls: {{ sni: localhost, ca_file: {} }}",
            ca.display()
        ),
        "  - { name: catalog, path_prefix: /api/, upstream: catalog, plugins: [limit], cache: { key_query_params: [category, cursor, limit], tag_query_param: category } }",
        &format!(
            "{redis}plugin_host:\n  shared_data: {{ ttl_by_prefix: {{ \"ratelimit/\": 2m }} }}\n\
             plugins:\n  - {{ name: limit, module: {}, config: {{ rules: [{{ name: catalog, path_prefix: /api/, rate_per_second: 1000000, burst: 1000000000, scope: {scope} }}] }} }}\n",
            module.display(),
            redis = if scope == "cluster" {
                format!("redis: {{ addresses: [127.0.0.1:{redis}], sync_interval: {SYNC_INTERVAL_MS}ms }}\n")
            } else {
                String::new()
            },
        ),
    )
}

/// Each instance's lease renewals and heartbeats sent so far (its own counters, in process).
fn redis_counts(instances: &[&RunningProxy]) -> Vec<[f64; 2]> {
    let sent = |p: &RunningProxy, kind: &str| {
        p.metrics
            .cluster_redis_commands
            .with_label_values(&[kind, "ok"])
            .get() as f64
    };
    instances
        .iter()
        .map(|p| [sent(p, "lease"), sent(p, "heartbeat")])
        .collect()
}

/// How many times the cluster rule decided `decision` (lease, debt, refused, local).
fn decisions(p: &RunningProxy, decision: &str) -> u64 {
    p.metrics
        .cluster_rate_limit_decisions
        .with_label_values(&[decision])
        .get()
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = Redis::start().await?;
    let rig::BenchOrigin { origin, ca, .. } =
        rig::start_cacheable_origin(dir.path(), args.products).await?;
    let addr = origin.local_addr();
    let local = proxy(&dir.path().join("local"), addr, &ca, "local", redis.port)?;
    let cluster = proxy(
        &dir.path().join("cluster"),
        addr,
        &ca,
        "cluster",
        redis.port,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metrics.cluster_connected.get() < 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster proxy never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let specs: Vec<load::LoadSpec> = [&local, &cluster]
        .iter()
        .map(|p| args.load.spec(p.listen, PATH, None))
        .collect::<anyhow::Result<_>>()?;
    let reference = load::fetch_once(&specs[0]).await?;
    anyhow::ensure!(
        load::fetch_once(&specs[1]).await? == reference,
        "the two proxies serve other bytes"
    );
    println!(
        "cache hits of `{PATH}` ({} bytes) behind the rate-limit plugin, rule scope local vs cluster (Redis, sync every {SYNC_INTERVAL_MS} ms), {}\n",
        reference.len(),
        args.load.describe()
    );
    let targets = [
        ("rule scope: local", &specs[0]),
        ("rule scope: cluster", &specs[1]),
    ];
    const DECISIONS: [&str; 4] = ["lease", "debt", "refused", "local"];
    let before = DECISIONS.map(|d| decisions(&cluster, d));
    let series = rig::alternate(args.load.rounds, &targets).await?;
    println!("{}", report::summary(&series, &series[0]));
    print!("cluster rule decisions over the rounds (warm-ups included):");
    for (d, b) in DECISIONS.iter().zip(before) {
        print!(" {d} {}", decisions(&cluster, d) - b);
    }
    println!();

    // Redis operations at a fixed offered load spread over three cluster instances sharing
    // the bucket (the first is the one measured above).
    let others = [
        proxy(
            &dir.path().join("cluster-2"),
            addr,
            &ca,
            "cluster",
            redis.port,
        )?,
        proxy(
            &dir.path().join("cluster-3"),
            addr,
            &ca,
            "cluster",
            redis.port,
        )?,
    ];
    let instances: Vec<&RunningProxy> = std::iter::once(&cluster).chain(&others).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &instances {
        while p.metrics.cluster_instances.get() < instances.len() as i64 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the instances never saw each other"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let warmup = Duration::from_secs(1);
    let runs: Vec<_> = instances
        .iter()
        .map(|p| {
            let mut paced = args.load.spec(p.listen, PATH, None)?;
            paced.rate = Some(args.rate / instances.len() as f64);
            paced.warmup = warmup;
            Ok(tokio::spawn(load::run(paced)))
        })
        .collect::<anyhow::Result<_>>()?;
    let seconds = args.load.seconds as f64;
    tokio::time::sleep(warmup).await;
    let before = (redis_counts(&instances), redis.command_calls().await?);
    let mut served = 0.0;
    let mut refused = 0;
    for run in runs {
        let result = run.await??;
        served += result.throughput();
        refused += result.errors;
    }
    let after = (redis_counts(&instances), redis.command_calls().await?);
    let intervals_per_second = 1000.0 / SYNC_INTERVAL_MS as f64;
    let per_command = rates(&before.1, &after.1, seconds);
    let sent: f64 = ["evalsha", "eval", "xread", "xadd", "sadd", "scard"]
        .iter()
        .filter_map(|c| per_command.get(*c))
        .sum();
    let per_instance = |i: usize, which: usize| (after.0[i][which] - before.0[i][which]) / seconds;
    let leases: Vec<String> = (0..instances.len())
        .map(|i| format!("{:.1}", per_instance(i, 0)))
        .collect();
    let total_leases: f64 = (0..instances.len()).map(|i| per_instance(i, 0)).sum();
    let beats: f64 = (0..instances.len()).map(|i| per_instance(i, 1)).sum();
    println!(
        "\nRedis at {:.0} req/s offered ({served:.0} served, {refused} not 200) over {} instances for {seconds:.0} s, one bucket:\n  \
         lease renewals {total_leases:.1}/s (per instance {}; bound {:.0}/s, instances / sync_interval), heartbeats {beats:.1}/s in all\n  \
         commands sent to Redis {sent:.1}/s ({:.1} per instance, {:.5} per request); redis-server calls by command (those inside the scripts included): {}",
        args.rate,
        instances.len(),
        leases.join(", "),
        instances.len() as f64 * intervals_per_second,
        sent / instances.len() as f64,
        sent / served.max(1.0),
        per_command
            .iter()
            .map(|(name, rate)| format!("{name} {rate:.1}/s"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for p in others {
        p.stop();
    }
    cluster.stop();
    local.stop();
    Ok(())
}
