//! What proxy-wasm plugins cost end to end: throughput and CPU per request through five proxies
//! in one process - no plugin, one no-op plugin, three no-op plugins, the production plugins as
//! three separate plugins (auth by API key -> rate-limit -> metrics-export, with a limit high
//! enough never to refuse), and the same three as one merged plugin (`shop-edge`, the shipped
//! chain) - alternating rounds in one run, each proxy with the same 2 worker threads. Every
//! request carries the API key, whatever the proxy. Two workloads:
//!   - cache hits (default): `category=polo` served from the edge cache, the least work a proxy
//!     does for a request, so what plugins add weighs the most;
//!   - `--fetch`: every request goes to the origin (the route has no cache) over the pooled,
//!     resumed TLS connections, for a product detail the origin answers from its item cache.
//!
//! `cargo run --release -p edge-benches --bin plugin-overhead [-- --fetch]` (after `make plugins`).

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use edge_benches::load;
use edge_benches::report;
use edge_benches::rig;
use edge_proxy::RunningProxy;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 2_000)]
    products: u32,
    #[command(flatten)]
    load: rig::LoadArgs,
    /// Open-loop rounds at this fraction of the SLOWEST target's capacity (so that no target
    /// is saturated): CPU per request at the same offered load, where a slower proxy does not
    /// pay for the extra wake-ups of a load client that waits on it (0 skips them).
    #[arg(long, default_value_t = 0.5)]
    paced_load: f64,
    /// The request; by default `/api/v1/products?category=polo&limit=50` (cache hits), or
    /// `/api/v1/products/42` with `--fetch`.
    #[arg(long)]
    path: Option<String>,
    /// Every request is fetched from the origin: the catalog route has no edge cache.
    #[arg(long)]
    fetch: bool,
    /// The plugin module every plugin slot runs.
    #[arg(long, default_value = "plugins/target/wasm32-wasip1/release/noop.wasm")]
    module: std::path::PathBuf,
    /// Load only one proxy (0, 1 or 3 no-op plugins, 4 for the three production plugins, 5
    /// for the merged `shop-edge`), e.g. to profile it.
    #[arg(long)]
    only: Option<usize>,
    /// The production proxy's chain (a subset of the three, e.g. `rate-limit` to see one).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "auth,rate-limit,metrics-export"
    )]
    production: Vec<String>,
    /// Each no-op plugin runs its own copy of the module (made distinct by a custom section),
    /// so each has its own compiled code, as different plugins do; by default the three
    /// no-op plugins share one compiled module.
    #[arg(long)]
    distinct_modules: bool,
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

const API_KEY: &str = "bench-key-0123456789abcdef";

/// What every request of a run is: a cache hit, or a fetch from the origin.
#[derive(Debug, Clone, Copy)]
enum Workload {
    CacheHits,
    Fetches,
}

impl Workload {
    fn of(args: &Args) -> Self {
        if args.fetch {
            Self::Fetches
        } else {
            Self::CacheHits
        }
    }

    fn default_path(self) -> &'static str {
        match self {
            Self::CacheHits => "/api/v1/products?category=polo&limit=50",
            Self::Fetches => "/api/v1/products/42",
        }
    }

    /// The catalog route's `cache:` entry (YAML flow mapping continued), none for fetches.
    fn route_cache(self) -> &'static str {
        match self {
            Self::CacheHits => {
                ", cache: { key_query_params: [category, cursor, limit], tag_query_param: category }"
            }
            Self::Fetches => "",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::CacheHits => "cache hits of",
            Self::Fetches => "origin fetches (no edge cache) of",
        }
    }
}

/// The production chain's plugin entries (modules next to `noop`).
fn production_plugins(dir: &Path) -> String {
    let module = |name: &str| dir.join(format!("{name}.wasm")).display().to_string();
    format!(
        "  - {{ name: auth, module: {auth}, config: {{ protected_prefixes: [/api/], api_keys: [{{ client_id: bench, key: {API_KEY} }}] }} }}\n\
         \x20 - {{ name: rate-limit, module: {limit}, config: {{ rules: [{{ name: catalog, path_prefix: /api/, rate_per_second: 1000000, burst: 1000000000 }}] }} }}\n\
         \x20 - {{ name: metrics-export, module: {metrics}, config: {{ categories: [polo, tee], client_classes: {{ \"bench\": internal }} }} }}\n",
        auth = module("auth"),
        limit = module("rate_limit"),
        metrics = module("metrics_export"),
    )
}

/// The merged plugin with the same three configurations, as its sections.
fn merged_plugin(dir: &Path) -> String {
    format!(
        "  - {{ name: shop-edge, module: {module}, config: {{ auth: {{ protected_prefixes: [/api/], api_keys: [{{ client_id: bench, key: {API_KEY} }}] }}, rate_limit: {{ rules: [{{ name: catalog, path_prefix: /api/, rate_per_second: 1000000, burst: 1000000000 }}] }}, metrics: {{ categories: [polo, tee], client_classes: {{ \"bench\": internal }} }} }} }}\n",
        module = dir.join("shop_edge.wasm").display(),
    )
}

/// A proxy in `dir` whose catalog route runs `chain` (names of plugins in `plugins`, YAML list
/// entries).
fn proxy(
    dir: &Path,
    origin: std::net::SocketAddr,
    ca: &Path,
    plugins: &str,
    chain: &[&str],
    workload: Workload,
) -> anyhow::Result<RunningProxy> {
    std::fs::create_dir_all(dir)?;
    let cache = workload.route_cache();
    rig::start_proxy(
        dir,
        &format!(
            "  catalog:\n    addresses: [{origin}]\n    tls: {{ sni: localhost, ca_file: {} }}",
            ca.display()
        ),
        &format!(
            "  - {{ name: catalog, path_prefix: /api/, upstream: catalog, plugins: [{}]{cache} }}",
            chain.join(", ")
        ),
        &format!(
            "plugin_host:\n  shared_data: {{ ttl_by_prefix: {{ \"ratelimit/\": 2m }} }}\nplugins:\n{}",
            if plugins.is_empty() { "  []\n" } else { plugins }
        ),
    )
}

/// `names` as no-op plugin entries; with `copies_in`, each runs its own copy of `module`.
fn noops(module: &Path, names: &[&str], copies_in: Option<&Path>) -> anyhow::Result<String> {
    let mut entries = String::new();
    for name in names {
        let path = match copies_in {
            Some(dir) => distinct_copy(module, dir, name)?,
            None => module.to_path_buf(),
        };
        entries.push_str(&format!(
            "  - {{ name: {name}, module: {}, vms: 2 }}\n",
            path.display()
        ));
    }
    Ok(entries)
}

/// A copy of `module` in `dir` with a custom section named after `name` appended: the same
/// code, but another content hash, so the engine compiles it separately.
fn distinct_copy(module: &Path, dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    const SECTION: &[u8] = b"edge-bench-copy";
    let mut wasm = std::fs::read(module)?;
    let size = 1 + SECTION.len() + name.len();
    anyhow::ensure!(size < 128 && SECTION.len() < 128, "plugin name too long");
    // Custom section: id 0, size, name length, name, payload (each length fits one LEB128 byte).
    wasm.extend([0, size as u8, SECTION.len() as u8]);
    wasm.extend_from_slice(SECTION);
    wasm.extend_from_slice(name.as_bytes());
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm)?;
    Ok(path)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let module = std::fs::canonicalize(&args.module)
        .with_context(|| format!("{} (run `make plugins`)", args.module.display()))?;
    let dir = tempfile::tempdir()?;
    let rig::BenchOrigin { origin, ca, .. } =
        rig::start_cacheable_origin(dir.path(), args.products).await?;
    let addr = origin.local_addr();
    let modules = module.parent().context("the module's folder")?;
    let workload = Workload::of(&args);
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| workload.default_path().into());
    let none = proxy(&dir.path().join("none"), addr, &ca, "", &[], workload)?;
    let one = proxy(
        &dir.path().join("one"),
        addr,
        &ca,
        &noops(&module, &["noop"], None)?,
        &["noop"],
        workload,
    )?;
    let abc = ["noop-a", "noop-b", "noop-c"];
    let three = proxy(
        &dir.path().join("three"),
        addr,
        &ca,
        &noops(&module, &abc, args.distinct_modules.then(|| dir.path()))?,
        &abc,
        workload,
    )?;
    let shop = proxy(
        &dir.path().join("shop"),
        addr,
        &ca,
        &production_plugins(modules),
        &args
            .production
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        workload,
    )?;
    let merged = proxy(
        &dir.path().join("merged"),
        addr,
        &ca,
        &merged_plugin(modules),
        &["shop-edge"],
        workload,
    )?;
    let specs: Vec<load::LoadSpec> = [&none, &one, &three, &shop, &merged]
        .iter()
        .map(|p| {
            let mut spec = args.load.spec(p.listen, &path, None)?;
            spec.headers = vec![("x-api-key".into(), API_KEY.into())];
            Ok(spec)
        })
        .collect::<anyhow::Result<_>>()?;
    let reference = load::fetch_once(&specs[0]).await?;
    for spec in &specs[1..] {
        anyhow::ensure!(
            load::fetch_once(spec).await? == reference,
            "a plugin proxy serves other bytes"
        );
    }
    println!(
        "{} `{path}` ({} bytes) through the plugin chain, {}\n",
        workload.describe(),
        reference.len(),
        args.load.describe()
    );
    let targets = [
        (0, "no plugin", &specs[0]),
        (1, "1 no-op plugin", &specs[1]),
        (3, "3 no-op plugins", &specs[2]),
        (4, "auth+rate-limit+metrics", &specs[3]),
        (5, "shop-edge (merged)", &specs[4]),
    ];
    let chosen: Vec<(&str, &load::LoadSpec)> = targets
        .iter()
        .filter(|(n, _, _)| args.only.is_none_or(|only| only == *n))
        .map(|(_, name, spec)| (*name, *spec))
        .collect();
    anyhow::ensure!(!chosen.is_empty(), "--only takes 0, 1, 3, 4 or 5");
    let series = rig::alternate(args.load.rounds, &chosen).await?;
    println!("{}", report::summary(&series, &series[0]));
    if args.paced_load > 0.0 {
        let slowest = series
            .iter()
            .map(report::Series::median_throughput)
            .fold(f64::INFINITY, f64::min);
        let rate = args.paced_load * slowest;
        println!(
            "open loop: every target at {rate:.0} req/s ({:.0}% of the slowest one's capacity), latency from each request's due time\n",
            args.paced_load * 100.0
        );
        let paced: Vec<load::LoadSpec> = chosen
            .iter()
            .map(|(_, spec)| load::LoadSpec {
                rate: Some(rate),
                ..(*spec).clone()
            })
            .collect();
        let named: Vec<(&str, &load::LoadSpec)> = chosen
            .iter()
            .zip(&paced)
            .map(|((name, _), spec)| (*name, spec))
            .collect();
        let series = rig::alternate(args.load.rounds, &named).await?;
        println!("{}", report::summary(&series, &series[0]));
    }
    for p in [none, one, three, shop, merged] {
        tokio::task::spawn_blocking(move || p.stop()).await?;
    }
    origin.stop().await;
    Ok(())
}
