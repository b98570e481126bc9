//! Memory stays bounded: fills the edge cache with `--keys` distinct ~2 KB responses through
//! the real proxy (`cache.max_bytes` = `--max-mib`), then reports the process RSS next to the
//! bound. Origin stub, proxy and client share this process, so the RSS covers all three.
//!
//! `cargo run --release -p edge-benches --bin cache-memory -- --help`

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use edge_benches::load::{self, LoadSpec};
use edge_benches::rig;
use rustls_pki_types::ServerName;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    max_mib: u64,
    #[arg(long, default_value_t = 2048)]
    body_bytes: usize,
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A plain-HTTP origin stub: every path gets the same cacheable body.
async fn start_stub(body_bytes: usize) -> anyhow::Result<std::net::SocketAddr> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let mut response = http::Response::new(http_body_util::Full::new(body.clone()));
                    response.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("public, s-maxage=3600"),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stub = start_stub(args.body_bytes).await?;
    let max_bytes = args.max_mib * 1024 * 1024;
    let proxy = rig::start_proxy(
        dir.path(),
        &format!("  stub:\n    addresses: [{stub}]"),
        "  - { name: fill, path_prefix: /, upstream: stub, cache: { key_query_params: [k] } }",
        &format!("cache: {{ max_bytes: {max_bytes} }}"),
    )?;
    let spec = LoadSpec {
        addr: proxy.listen,
        server_name: ServerName::try_from("localhost")?.to_owned(),
        path_and_query: "/".into(),
        connections: args.connections,
        warmup: Duration::ZERO,
        duration: Duration::ZERO,
        tls: None,
        rate: None,
        headers: Vec::new(),
        mix: Vec::new(),
        transport: load::Transport::KeepAlive,
    };
    println!(
        "filling {} distinct keys of {} B through the proxy, cache.max_bytes = {} MiB; RSS at start {:.0} MiB",
        args.keys,
        args.body_bytes,
        args.max_mib,
        rss_mib()
    );
    let started = Instant::now();
    let chunk = args.keys / 4;
    let mut done = 0;
    for step in 1..=4u64 {
        let total = if step == 4 { args.keys - done } else { chunk };
        // Each chunk continues the key sequence where the previous one stopped.
        let offset = done;
        let path = Arc::new(move |i: u64| format!("/item?k={}", i + offset));
        let ok = load::fill(spec.clone(), total, path).await?;
        done += total;
        let m = &proxy.metrics;
        println!(
            "{done:>9} keys ({ok} ok) after {:>5.1}s: RSS {:>6.0} MiB; {} misses filled",
            started.elapsed().as_secs_f64(),
            rss_mib(),
            m.cache_lookups.with_label_values(&["fill", "MISS"]).get(),
        );
    }
    let admin = LoadSpec {
        addr: proxy.admin,
        path_and_query: "/metrics".into(),
        connections: 1,
        ..spec.clone()
    };
    let text = String::from_utf8_lossy(&load::fetch_once(&admin).await?).into_owned();
    let series = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN)
    };
    let rss = rss_mib();
    println!(
        "\nfinal: RSS {rss:.0} MiB; bound {} MiB + 128 MiB = {} MiB -> {}; cache holds {:.0} entries, {:.1} MiB weighted; {:.0} evictions",
        args.max_mib,
        args.max_mib + 128,
        if rss <= (args.max_mib + 128) as f64 { "within" } else { "OVER" },
        series("edge_cache_entries "),
        series("edge_cache_bytes ") / 1024.0 / 1024.0,
        series("edge_cache_evictions "),
    );
    tokio::task::spawn_blocking(move || proxy.stop()).await?;
    Ok(())
}
