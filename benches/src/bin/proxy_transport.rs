//! The classic upstream transport ablation, side by side in one run, through the real proxy:
//!   (1) no pooling: the origin closes every connection, so each request is a new TCP
//!       connection and a full TLS handshake;
//!   (2) pooling, TLS resumption defeated: connections are reused, the origin recycles them every
//!       `--recycle` requests (nginx's classic keepalive_requests), and refuses to resume;
//!   (3) pooling + resumption: the same recycling, but new connections resume their session.
//! Clients reach the proxy over plain keep-alive HTTP; the request is a product detail that the
//! origin serves from its item cache, so the transport dominates.
//!
//! `cargo run --release -p edge-benches --bin proxy-transport -- --help`

use std::path::Path;

use anyhow::Context;
use clap::Parser;
use edge_benches::load::{self, LoadSpec};
use edge_benches::report;
use edge_benches::rig;
use edge_proxy::RunningProxy;
use origin_service::RunningOrigin;

#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    load: rig::LoadArgs,
    /// Requests per upstream connection before the origin closes it, in (2) and (3).
    #[arg(long, default_value_t = 100)]
    recycle: u64,
    #[arg(long, default_value = "/api/v1/products/42")]
    path: String,
}

struct Variant {
    name: &'static str,
    origin: RunningOrigin,
    proxy: RunningProxy,
    _dir: tempfile::TempDir,
}

async fn variant(
    name: &'static str,
    max_requests: u64,
    resumption: bool,
) -> anyhow::Result<Variant> {
    let dir = tempfile::tempdir()?;
    let rig::BenchOrigin { origin, ca, .. } = rig::start_origin(
        dir.path(),
        &format!(
            "http: {{ max_requests_per_connection: {max_requests} }}\n\
             tls: {{ session_tickets: {resumption}, session_cache_entries: {cache} }}\n\
             database: {{ seed_products: 500 }}",
            cache = if resumption { 1024 } else { 0 }
        ),
    )
    .await?;
    let proxy = start_proxy(dir.path(), origin.local_addr(), &ca)?;
    Ok(Variant {
        name,
        origin,
        proxy,
        _dir: dir,
    })
}

fn start_proxy(
    dir: &Path,
    origin: std::net::SocketAddr,
    ca: &Path,
) -> anyhow::Result<RunningProxy> {
    rig::start_proxy(
        dir,
        &format!(
            "  catalog:\n    addresses: [{origin}]\n    tls: {{ sni: localhost, ca_file: {} }}",
            ca.display()
        ),
        "  - { name: catalog, path_prefix: /api/, upstream: catalog }",
        "",
    )
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let variants = vec![
        variant("(1) no pooling, full TLS", 1, false).await?,
        variant("(2) pooling, no resumption", args.recycle, false).await?,
        variant("(3) pooling + resumption", args.recycle, true).await?,
    ];
    let spec = |v: &Variant| args.load.spec(v.proxy.listen, &args.path, None);
    for v in &variants {
        load::fetch_once(&spec(v)?)
            .await
            .with_context(|| format!("{} does not answer", v.name))?;
    }
    println!(
        "upstream transport ablation: `{}` through the proxy, {}, origin recycles every {} requests in (2)/(3)\n",
        args.path,
        args.load.describe(),
        args.recycle
    );
    let specs = variants
        .iter()
        .map(spec)
        .collect::<anyhow::Result<Vec<LoadSpec>>>()?;
    let targets: Vec<(&str, &LoadSpec)> = variants.iter().map(|v| v.name).zip(&specs).collect();
    let series = rig::alternate(args.load.rounds, &targets).await?;
    println!("{}", report::summary(&series, &series[0]));
    for v in &variants {
        let m = v.origin.metrics();
        println!(
            "{}: origin saw {} full and {} resumed TLS handshakes",
            v.name,
            m.tls_handshakes.with_label_values(&["full"]).get(),
            m.tls_handshakes.with_label_values(&["resumed"]).get()
        );
    }
    for v in variants {
        tokio::task::spawn_blocking(move || v.proxy.stop()).await?;
        v.origin.stop().await;
    }
    Ok(())
}
