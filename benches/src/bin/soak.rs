//! `soak`: the shipped `config/edge.yaml` (the shop-edge plugin: auth, rate limit, metrics; the cache)
//! run by the real release `edge-proxy` binary in front of a seeded origin, under a realistic
//! mix for `--minutes`: listings over every category and page size with the API key, product
//! details, requests without or with a wrong key (401), one hot client without a key past a
//! tight rule on the public categories path (429; the shop's own client stays under its limits), a purge of a random category every 10 s and a reload (SIGHUP) every minute. Prints per
//! minute: requests, errors, p99, the proxy's RSS; then the verdict against the targets (0
//! errors; RSS flat within 10% after the first minute).
//!
//! `make soak` (10 minutes), or `cargo run --release -p edge-benches --bin soak -- --minutes 3`
//! after `cargo build --release -p edge-proxy` and `make plugins`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use edge_benches::rig;
use edge_benches::wire::{get_request, Connection};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "dev-catalog-key-0123456789abcdef";
const PURGE_TOKEN: &str = "dev-purge-token-0123456789abcdef";
const CATEGORIES: [&str; 14] = [
    "polo",
    "oxford",
    "flannel",
    "linen",
    "denim",
    "chambray",
    "henley",
    "tee",
    "hawaiian",
    "dress",
    "overshirt",
    "rugby",
    "poplin",
    "corduroy",
];

#[derive(Debug, Parser)]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Client connections (closed loop).
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// What the clients saw in the current minute.
#[derive(Debug)]
struct Minute {
    ok: AtomicU64,
    unauthorized: AtomicU64,
    limited: AtomicU64,
    errors: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    last_error: Mutex<String>,
}

impl Minute {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            ok: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            last_error: Mutex::new(String::new()),
        })
    }

    fn error(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = why;
        }
    }
}

/// A small xorshift generator: the mix needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The next request of the mix and the statuses it may get.
fn next_request(rng: &mut Rng, hot: bool) -> (Vec<u8>, &'static [u16]) {
    let key = [("x-api-key".to_string(), KEY.to_string())];
    if hot {
        // One client without a key hammering the public categories: past its rule: 429s.
        return (
            get_request("edge.test", "/api/v1/categories", &[]),
            &[200, 429],
        );
    }
    let roll = rng.below(100);
    let category = CATEGORIES[rng.below(CATEGORIES.len() as u64) as usize];
    let limit = [10, 20, 50][rng.below(3) as usize];
    let listing = format!("/api/v1/products?category={category}&limit={limit}");
    let detail = format!("/api/v1/products/{}", 1 + rng.below(500));
    let wrong = [(
        "x-api-key".to_string(),
        "not-a-key-0123456789abcdef".to_string(),
    )];
    match roll {
        0..=69 => (get_request("edge.test", &listing, &key), &[200]),
        70..=89 => (get_request("edge.test", &detail, &key), &[200]),
        90..=94 => (
            get_request("edge.test", "/api/v1/products?category=tee", &[]),
            &[401],
        ),
        _ => (
            get_request("edge.test", "/api/v1/products?category=linen", &wrong),
            &[401],
        ),
    }
}

async fn client(
    addr: SocketAddr,
    id: usize,
    minute: Arc<Mutex<Arc<Minute>>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut connection: Option<Connection> = None;
    let hot = id == 0;
    while !stop.load(Ordering::Relaxed) {
        let current = match minute.lock() {
            Ok(m) => m.clone(),
            Err(_) => return,
        };
        let (request, expected) = next_request(&mut rng, hot);
        if connection.is_none() {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => connection = Some(Connection::new(Box::new(tcp), request.clone())),
                Err(e) => {
                    current.error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(open) = connection.as_mut() else {
            continue;
        };
        open.set_request(request);
        let started = Instant::now();
        match open.roundtrip().await {
            Ok(response) => {
                if response.closing {
                    connection = None;
                }
                if !expected.contains(&response.status) {
                    current.error(format!("status {}", response.status));
                    continue;
                }
                match response.status {
                    401 => current.unauthorized.fetch_add(1, Ordering::Relaxed),
                    429 => current.limited.fetch_add(1, Ordering::Relaxed),
                    _ => current.ok.fetch_add(1, Ordering::Relaxed),
                };
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut h) = current.latency_us.lock() {
                    let _ = h.record(micros.max(1));
                }
            }
            Err(e) => {
                current.error(format!("{e:#}"));
                connection = None;
            }
        }
    }
}

/// `POST /cache/purge?category=...` on the admin listener; the status.
async fn purge(admin: SocketAddr, category: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await?;
    let request = format!(
        "POST /cache/purge?category={category} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {PURGE_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status from the admin listener")
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The shipped config, pointed at this run's origin, ports and state.
fn config(
    repo: &std::path::Path,
    dir: &std::path::Path,
    origin: SocketAddr,
    ca: &std::path::Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<PathBuf> {
    let shipped = std::fs::read_to_string(repo.join("config/edge.yaml"))?;
    let text = shipped
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9090", &admin.to_string())
        .replace("127.0.0.1:8443", &origin.to_string())
        .replace("../.state/origin/tls/ca.pem", &ca.display().to_string())
        .replace(
            "../.state/edge/modules",
            &dir.join("modules").display().to_string(),
        )
        .replace("../plugins/", &format!("{}/plugins/", repo.display()))
        .replace(
            "/tmp/edge-proxy-upgrade.sock",
            &dir.join("upgrade.sock").display().to_string(),
        );
    // Rate limits: the shop's clients (one API key here) stay under theirs, so the mix is
    // mostly 200s; the one hot client hammers the public categories path without a key, keyed
    // by its address, past a tight rule of its own: its 429s.
    let polo = "{ name: polo-listing, path_prefix: /api/v1/products, query: { category: polo }, rate_per_second: 50, burst: 100 }";
    let catalog = "{ name: catalog, path_prefix: /api/, rate_per_second: 100, burst: 200 }";
    anyhow::ensure!(
        text.contains(polo) && text.contains(catalog),
        "config/edge.yaml's rate-limit rules changed: update the soak"
    );
    let text = text
        .replace(
            polo,
            "{ name: public-categories, path_prefix: /api/v1/categories, rate_per_second: 20, burst: 40 }\n          - { name: polo-listing, path_prefix: /api/v1/products, query: { category: polo }, rate_per_second: 1000000, burst: 1000000 }",
        )
        .replace(
            catalog,
            "{ name: catalog, path_prefix: /api/, rate_per_second: 1000000, burst: 1000000 }",
        );
    let path = dir.join("edge.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rig::run(soak(args))
}

async fn soak(args: Args) -> anyhow::Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let binary = std::env::current_exe()?
        .parent()
        .context("no folder for this binary")?
        .join("edge-proxy");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: cargo build --release -p edge-proxy",
        binary.display()
    );
    let dir = tempfile::tempdir()?;
    let origin = rig::start_origin(dir.path(), "database: { seed_products: 500 }").await?;
    let listen = SocketAddr::from(([127, 0, 0, 1], rig::free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], rig::free_port()?));
    let path = config(
        &repo,
        dir.path(),
        origin.origin.local_addr(),
        &origin.ca,
        listen,
        admin,
    )?;
    let proxy = Proxy(
        Command::new(&binary)
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = proxy.0.id();
    let started = Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "soak: {} minutes, {} connections, shipped config (shop-edge: auth, rate limit, metrics; cache), purge every 10 s, reload every minute; proxy pid {pid}",
        args.minutes, args.connections
    );
    println!("| minute | requests | 200 | 401 | 429 | errors | p99 ms | proxy RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let minute = Arc::new(Mutex::new(Arc::new(Minute::new()?)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.connections)
        .map(|id| tokio::spawn(client(listen, id, minute.clone(), stop.clone())))
        .collect();
    let (mut total_errors, mut rss) = (0u64, Vec::new());
    let mut purge_errors = 0u64;
    let mut last_error = String::new();
    for m in 1..=args.minutes {
        for tick in 0..6 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let category = CATEGORIES[(m as usize * 6 + tick) % CATEGORIES.len()];
            if !matches!(purge(admin, category).await, Ok(200)) {
                purge_errors += 1;
            }
        }
        let done = {
            let mut slot = minute.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            std::mem::replace(&mut *slot, Arc::new(Minute::new()?))
        };
        // The reload every minute (SIGHUP), as an operator's config push would.
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
        let ok = done.ok.load(Ordering::Relaxed);
        let unauthorized = done.unauthorized.load(Ordering::Relaxed);
        let limited = done.limited.load(Ordering::Relaxed);
        let errors = done.errors.load(Ordering::Relaxed);
        let p99 = done
            .latency_us
            .lock()
            .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0);
        let memory = rss_mib(pid);
        total_errors += errors;
        if errors > 0 {
            last_error = done
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
        }
        rss.push(memory);
        println!(
            "| {m} | {} | {ok} | {unauthorized} | {limited} | {errors} | {p99:.2} | {memory:.1} |",
            ok + unauthorized + limited + errors
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let after_warmup = if rss.len() > 1 { &rss[1..] } else { &rss[..] };
    let (low, high) = after_warmup
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let spread = if low > 0.0 { high / low - 1.0 } else { 0.0 };
    println!(
        "\nerrors: {total_errors} (target 0){}; purge failures: {purge_errors}",
        if total_errors > 0 {
            format!(", last: {last_error}")
        } else {
            String::new()
        }
    );
    println!(
        "RSS after the first minute: {low:.1}..{high:.1} MiB, spread {:.1}% (target <= 10%): {}",
        spread * 100.0,
        if spread <= 0.10 { "flat" } else { "NOT flat" }
    );
    drop(proxy);
    anyhow::ensure!(
        total_errors == 0 && purge_errors == 0,
        "the soak saw errors"
    );
    Ok(())
}
