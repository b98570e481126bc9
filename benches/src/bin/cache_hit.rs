//! Cache-hit throughput and latency for `category=polo` through the proxy, next to the same
//! listing fetched directly from the origin, alternating rounds in one process and one run:
//! first closed loop (capacity: as fast as each target answers), then open loop at the same
//! offered load for both (latency as users see it at a given traffic level).
//! Clients speak keep-alive HTTP to the edge and keep-alive HTTPS to the origin, as they would.
//!
//! `cargo run --release -p edge-benches --bin cache-hit -- --help`

use clap::Parser;
use edge_benches::load;
use edge_benches::report;
use edge_benches::rig;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    products: u32,
    #[command(flatten)]
    load: rig::LoadArgs,
    #[command(flatten)]
    paced: rig::PacedArgs,
    #[arg(long, default_value = "/api/v1/products?category=polo&limit=50")]
    path: String,
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    eprintln!(
        "seeding {} products and starting origin + proxy ...",
        args.products
    );
    let rig::BenchOrigin { origin, ca, .. } =
        rig::start_cacheable_origin(dir.path(), args.products).await?;
    let proxy = rig::start_proxy(
        dir.path(),
        &format!(
            "  catalog:\n    addresses: [{}]\n    tls: {{ sni: localhost, ca_file: {} }}",
            origin.local_addr(),
            ca.display()
        ),
        "  - { name: catalog, path_prefix: /api/, upstream: catalog, cache: { key_query_params: [category, cursor, limit], tag_query_param: category } }",
        "",
    )?;

    let direct = args.load.spec(
        origin.local_addr(),
        &args.path,
        Some(load::client_tls(&ca)?),
    )?;
    let edge = args.load.spec(proxy.listen, &args.path, None)?;
    let origin_body = load::fetch_once(&direct).await?;
    let edge_body = load::fetch_once(&edge).await?; // fills the cache
    anyhow::ensure!(origin_body == edge_body, "the edge serves different bytes");

    println!(
        "`{}` ({} bytes), {}
",
        args.path,
        edge_body.len(),
        args.load.describe()
    );
    let series = rig::alternate(
        args.load.rounds,
        &[
            ("direct origin (https)", &direct),
            ("edge cache hit (http)", &edge),
        ],
    )
    .await?;
    println!("{}", report::summary(&series, &series[0]));
    if args.paced.paced_load > 0.0 {
        let rate = args.paced.paced_load * series[0].median_throughput();
        println!(
            "open loop: both at {rate:.0} req/s ({:.0}% of the direct origin's capacity), latency from each request's due time\n",
            args.paced.paced_load * 100.0
        );
        let paced = |spec: &load::LoadSpec| load::LoadSpec {
            rate: Some(rate),
            ..spec.clone()
        };
        let (direct, edge) = (paced(&direct), paced(&edge));
        let series = rig::alternate(
            args.load.rounds,
            &[
                ("direct origin, same load", &direct),
                ("edge cache hit, same load", &edge),
            ],
        )
        .await?;
        println!("{}", report::summary(&series, &series[0]));
    }
    let lookups = |result: &str| {
        proxy
            .metrics
            .cache_lookups
            .with_label_values(&["catalog", result])
            .get()
    };
    println!(
        "edge cache lookups: {} HIT, {} MISS (the one fill)",
        lookups("HIT"),
        lookups("MISS")
    );
    tokio::task::spawn_blocking(move || proxy.stop()).await?;
    origin.stop().await;
    Ok(())
}
