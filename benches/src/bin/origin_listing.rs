//! Category listing throughput and latency: the real origin (SQLite, pool, read-only
//! transaction, JSON) next to a trivial handler that returns the very same bytes from memory
//! behind the very same TLS + HTTP/1.1 transport. Alternating rounds, one process, one run.
//!
//! `cargo run --release -p edge-benches --bin origin-listing -- --help`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use edge_benches::load;
use edge_benches::report;
use edge_benches::rig;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use origin_service::metrics::Metrics;
use origin_service::server::tls::{self, TestPki};
use origin_service::server::{self as transport, ConnOptions, Shutdown};

#[derive(Debug, Parser)]
struct Args {
    /// Products in the seeded catalog.
    #[arg(long, default_value_t = 50_000)]
    products: u32,
    #[command(flatten)]
    load: rig::LoadArgs,
    /// The listing to request.
    #[arg(long, default_value = "/api/v1/products?category=polo&limit=50")]
    path: String,
    /// Database pool size of the origin.
    #[arg(long, default_value_t = 8)]
    pool: u32,
}

fn main() -> anyhow::Result<()> {
    rig::run(bench(Args::parse()))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    eprintln!(
        "seeding {} products and starting the origin ...",
        args.products
    );
    let rig::BenchOrigin { origin, config, ca } = rig::start_origin(
        dir.path(),
        &format!(
            "database: {{ seed_products: {}, pool: {{ max_connections: {pool}, min_idle: {pool} }} }}",
            args.products,
            pool = args.pool
        ),
    )
    .await?;
    let tls_config = config.tls;
    let client_tls = load::client_tls(&ca)?;

    let spec = |addr| args.load.spec(addr, &args.path, Some(client_tls.clone()));

    // The trivial handler: the origin's exact bytes and headers, from memory.
    let origin_spec = spec(origin.local_addr())?;
    let body = load::fetch_once(&origin_spec).await?;
    let (memory_addr, memory_server) =
        start_memory_server(&state_tls(dir.path()), &tls_config, body.clone()).await?;
    let memory_spec = spec(memory_addr)?;
    anyhow::ensure!(
        load::fetch_once(&memory_spec).await? == body,
        "memory server differs"
    );

    println!(
        "category listing `{}` ({} bytes), {}
",
        args.path,
        body.len(),
        args.load.describe()
    );
    let series = rig::alternate(
        args.load.rounds,
        &[
            ("memory (same bytes)", &memory_spec),
            ("origin listing (sqlite)", &origin_spec),
        ],
    )
    .await?;
    println!("{}", report::summary(&series, &series[0]));
    memory_server.trigger();
    origin.stop().await;
    Ok(())
}

fn state_tls(dir: &std::path::Path) -> TestPki {
    TestPki::in_dir(&dir.join("state").join("tls"))
}

async fn start_memory_server(
    pki: &TestPki,
    tls_config: &origin_service::config::TlsConfig,
    body: Bytes,
) -> anyhow::Result<(std::net::SocketAddr, Shutdown)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(
        &pki.server_cert,
        &pki.server_key,
        tls_config,
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rep = origin_service::http::representation::Representation::from_body(body);
    let handler = move |_request| {
        let rep = rep.clone();
        async move {
            let mut response = Response::new(Full::new(rep.body.clone()));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::ETAG, rep.etag.clone());
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, s-maxage=30"),
            );
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            response
        }
    };
    let options = ConnOptions {
        keepalive_idle_timeout: Duration::from_secs(75),
        max_requests_per_connection: 0,
        tls_handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(1),
    };
    let (shutdown, stop) = Shutdown::new();
    tokio::spawn(transport::serve(
        listener,
        acceptor,
        options,
        Arc::new(Metrics::new()),
        handler,
        stop,
    ));
    Ok((addr, shutdown))
}
