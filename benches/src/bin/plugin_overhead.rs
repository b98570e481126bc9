//! What proxy-wasm plugins cost end to end: cache-hit throughput for `category=polo` through
//! three proxies in one process - no plugin, one no-op plugin, three no-op plugins - alternating
//! rounds in one run, each proxy with the same 2 worker threads and cache.
//!
//! `cargo run --release -p edge-benches --bin plugin-overhead` (after `make plugins`).

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
    #[arg(long, default_value = "/api/v1/products?category=polo&limit=50")]
    path: String,
    /// The plugin module every plugin slot runs.
    #[arg(long, default_value = "plugins/target/wasm32-wasip1/release/noop.wasm")]
    module: std::path::PathBuf,
    /// Load only the proxy with this many plugins (0, 1 or 3), e.g. to profile one of them.
    #[arg(long)]
    only: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

/// A proxy in `dir` whose catalog route runs `chain` (plugin names, each an instance of `module`).
fn proxy(
    dir: &Path,
    origin: std::net::SocketAddr,
    ca: &Path,
    module: &Path,
    chain: &[&str],
) -> anyhow::Result<RunningProxy> {
    std::fs::create_dir_all(dir)?;
    let plugins: String = chain
        .iter()
        .map(|name| {
            format!(
                "  - {{ name: {name}, module: {}, vms: 2 }}\n",
                module.display()
            )
        })
        .collect();
    rig::start_proxy(
        dir,
        &format!(
            "  catalog:\n    addresses: [{origin}]\n    tls: {{ sni: localhost, ca_file: {} }}",
            ca.display()
        ),
        &format!(
            "  - {{ name: catalog, path_prefix: /api/, upstream: catalog, plugins: [{}], cache: {{ key_query_params: [category, cursor, limit], tag_query_param: category }} }}",
            chain.join(", ")
        ),
        &format!("plugins:\n{}", if plugins.is_empty() { "  []\n".to_string() } else { plugins }),
    )
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let module = std::fs::canonicalize(&args.module)
        .with_context(|| format!("{} (run `make plugins`)", args.module.display()))?;
    let dir = tempfile::tempdir()?;
    let rig::BenchOrigin { origin, ca, .. } =
        rig::start_cacheable_origin(dir.path(), args.products).await?;
    let addr = origin.local_addr();
    let none = proxy(&dir.path().join("none"), addr, &ca, &module, &[])?;
    let one = proxy(&dir.path().join("one"), addr, &ca, &module, &["noop"])?;
    let three = proxy(
        &dir.path().join("three"),
        addr,
        &ca,
        &module,
        &["noop-a", "noop-b", "noop-c"],
    )?;
    let specs: Vec<load::LoadSpec> = [&none, &one, &three]
        .iter()
        .map(|p| args.load.spec(p.listen, &args.path, None))
        .collect::<anyhow::Result<_>>()?;
    let reference = load::fetch_once(&specs[0]).await?;
    for spec in &specs[1..] {
        anyhow::ensure!(
            load::fetch_once(spec).await? == reference,
            "a plugin proxy serves other bytes"
        );
    }
    println!(
        "cache hits of `{}` ({} bytes) through the plugin chain, {}\n",
        args.path,
        reference.len(),
        args.load.describe()
    );
    let targets = [
        (0, "no plugin", &specs[0]),
        (1, "1 no-op plugin", &specs[1]),
        (3, "3 no-op plugins", &specs[2]),
    ];
    let chosen: Vec<(&str, &load::LoadSpec)> = targets
        .iter()
        .filter(|(n, _, _)| args.only.is_none_or(|only| only == *n))
        .map(|(_, name, spec)| (*name, *spec))
        .collect();
    anyhow::ensure!(!chosen.is_empty(), "--only takes 0, 1 or 3");
    let series = rig::alternate(args.load.rounds, &chosen).await?;
    println!("{}", report::summary(&series, &series[0]));
    for p in [none, one, three] {
        tokio::task::spawn_blocking(move || p.stop()).await?;
    }
    origin.stop().await;
    Ok(())
}
