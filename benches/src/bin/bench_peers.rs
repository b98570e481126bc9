//! edge-proxy side by side with NGINX and Varnish (`make bench-peers`): each server a process
//! pinned to one core with one worker, the load client (and the origin) pinned to the other,
//! targets alternating over many short rounds, closed loop then open loop at the same offered
//! load. Reports throughput, p50/p99 and the server process's CPU per request; writes a Markdown
//! table and an SVG chart to `target/bench-report/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edge_benches::chart::{self, Bar};
use edge_benches::load::{self, LoadResult, LoadSpec};
use edge_benches::peers::{self, Server};
use edge_benches::{proc_cpu, rig};
use rustls_pki_types::ServerName;

#[derive(Debug, Parser)]
#[command(about = "edge-proxy against NGINX and Varnish, pinned, side by side")]
struct Args {
    /// Rounds per target, the targets alternating within each round.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Measured seconds per round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Unmeasured warm-up seconds per round.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Keep-alive connections of the load client (one request in flight each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The core the servers run on (one worker each).
    #[arg(long, default_value_t = 1)]
    server_core: usize,
    /// The core the load client and the origin run on.
    #[arg(long, default_value_t = 0)]
    client_core: usize,
    /// Open-loop rounds at this fraction of NGINX's closed-loop capacity on each path (0 skips).
    #[arg(long, default_value_t = 0.5)]
    paced_load: f64,
    /// Products the origin is seeded with (listings cover every page of every category).
    #[arg(long, default_value_t = 2000)]
    products: u32,
    /// Workloads to run (comma-separated): hit, fetch, mix, https (HTTPS hits over HTTP/1.1
    /// keep-alive), h2 (HTTPS hits over HTTP/2), handshakes (a new TLS connection per request,
    /// full and resumed; or one of them: tls13-full, tls13-resumed, tls12-full, tls12-resumed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hit,fetch,mix,https,h2,handshakes"
    )]
    workloads: Vec<String>,
    /// Where the Markdown report and the SVG chart go.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
}

const API_KEY: (&str, &str) = ("x-api-key", "dev-catalog-key-0123456789abcdef");
const HIT_PATH: &str = "/api/v1/products?category=polo&limit=20";
const FETCH_PATH: &str = "/api/v1/products/42";
/// Share of product details in the mix (the rest: listings, cached).
const MIX_DETAIL_SHARE: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Hit,
    Fetch,
    Mix,
    /// Cache hits over HTTPS keep-alive connections, HTTP/1.1 and HTTP/2.
    HttpsHit,
    H2Hit,
    /// A new TLS connection per request: full handshakes, and resumed ones (tickets); TLS 1.3
    /// (whose resumption still runs an ECDHE exchange) and TLS 1.2 (whose does not).
    TlsFull,
    TlsResumed,
    Tls12Full,
    Tls12Resumed,
}

impl Workload {
    fn title(self) -> &'static str {
        match self {
            Workload::Hit => "cache hit",
            Workload::Fetch => "origin fetch",
            Workload::Mix => "realistic mix",
            Workload::HttpsHit => "HTTPS hit h1",
            Workload::H2Hit => "HTTPS hit h2",
            Workload::TlsFull => "TLS 1.3 full handshake",
            Workload::TlsResumed => "TLS 1.3 resumed",
            Workload::Tls12Full => "TLS 1.2 full handshake",
            Workload::Tls12Resumed => "TLS 1.2 resumed",
        }
    }

    /// The `--workloads` name.
    fn name(self) -> &'static str {
        match self {
            Workload::Hit => "hit",
            Workload::Fetch => "fetch",
            Workload::Mix => "mix",
            Workload::HttpsHit => "https",
            Workload::H2Hit => "h2",
            Workload::TlsFull
            | Workload::TlsResumed
            | Workload::Tls12Full
            | Workload::Tls12Resumed => "handshakes",
        }
    }

    /// The `--workloads` name of this workload alone (handshake kinds one by one).
    fn single_name(self) -> &'static str {
        match self {
            Workload::TlsFull => "tls13-full",
            Workload::TlsResumed => "tls13-resumed",
            Workload::Tls12Full => "tls12-full",
            Workload::Tls12Resumed => "tls12-resumed",
            other => other.name(),
        }
    }

    fn tls(self) -> bool {
        !matches!(self, Workload::Hit | Workload::Fetch | Workload::Mix)
    }
}

/// Which server a target loads; also its chart colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Edge,
    EdgeChain,
    Nginx,
    Varnish,
}

impl Peer {
    fn title(self) -> &'static str {
        match self {
            Peer::Edge => "edge-proxy",
            Peer::EdgeChain => "edge-proxy + shop-edge",
            Peer::Nginx => "NGINX",
            Peer::Varnish => "Varnish",
        }
    }
}

#[derive(Debug)]
struct Target {
    workload: Workload,
    peer: Peer,
    spec: LoadSpec,
    pid: u32,
}

/// One round of one target.
#[derive(Debug, Clone)]
struct Round {
    result: LoadResult,
    /// The server's CPU (its whole process tree) per successful request, microseconds.
    cpu_us: f64,
    /// How busy the load client's core was, percent.
    client_busy: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pin_this_process(args.client_core)?;
    // One thread: the client's core is one core, and two runtime workers on it would only
    // take turns (and wake each other).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Every thread this process starts inherits the affinity set here, before the runtime.
fn pin_this_process(core: usize) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .context("taskset (util-linux) is needed to pin the load client")?;
    anyhow::ensure!(status.success(), "taskset failed: {status}");
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], rig::free_port()?)))
}

fn spec(args: &Args, addr: SocketAddr, path: &str) -> anyhow::Result<LoadSpec> {
    Ok(LoadSpec {
        addr,
        server_name: ServerName::try_from("localhost")?,
        path_and_query: path.to_string(),
        connections: args.connections,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.seconds),
        tls: None,
        rate: None,
        headers: vec![(API_KEY.0.into(), API_KEY.1.into())],
        mix: Vec::new(),
        transport: load::Transport::KeepAlive,
    })
}

/// Every listing page of every category (walked through `next_cursor`), and product details.
/// The mix holds details at `MIX_DETAIL_SHARE`, shuffled with a fixed seed.
async fn discover_mix(origin: &LoadSpec, products: u32) -> anyhow::Result<Vec<String>> {
    let get_json = |path: String| {
        let spec = LoadSpec {
            path_and_query: path,
            ..origin.clone()
        };
        async move {
            let body = load::fetch_once(&spec).await?;
            anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&body)?)
        }
    };
    let categories = get_json("/api/v1/categories".into()).await?;
    let slugs: Vec<String> = categories["categories"]
        .as_array()
        .context("no categories in /api/v1/categories")?
        .iter()
        .filter_map(|c| c["slug"].as_str().map(str::to_string))
        .collect();
    let mut listings = Vec::new();
    for slug in &slugs {
        let mut page = format!("/api/v1/products?category={slug}&limit=20");
        loop {
            let body = get_json(page.clone()).await?;
            listings.push(page.clone());
            match body["next_cursor"].as_str() {
                Some(cursor) => {
                    page = format!("/api/v1/products?category={slug}&limit=20&cursor={cursor}")
                }
                None => break,
            }
        }
    }
    let details = ((listings.len() as f64) * MIX_DETAIL_SHARE / (1.0 - MIX_DETAIL_SHARE)).round();
    let details = (details as u32).max(1);
    let step = (products / details).max(1);
    let mut mix = listings;
    mix.extend((0..details).map(|i| format!("/api/v1/products/{}", 1 + i * step)));
    // Fisher-Yates with a fixed xorshift: the same order every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..mix.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        mix.swap(i, (state % (i as u64 + 1)) as usize);
    }
    Ok(mix)
}

/// The running servers and the addresses the targets load.
struct Servers {
    edge: Server,
    edge_chain: Server,
    nginx: Server,
    varnish: Server,
    /// The HTTPS listeners of edge-proxy (no plugins) and NGINX.
    edge_tls: SocketAddr,
    nginx_tls: SocketAddr,
}

async fn start_servers(
    args: &Args,
    dir: &Path,
    origin: SocketAddr,
    ca: &Path,
) -> anyhow::Result<Servers> {
    let release = std::env::current_exe()?
        .parent()
        .context("the harness binary has no folder")?
        .to_path_buf();
    let edge_bin = release.join("edge-proxy");
    anyhow::ensure!(
        edge_bin.is_file(),
        "{} is missing: `cargo build --release -p edge-proxy` (make bench-peers does)",
        edge_bin.display()
    );
    let plugin_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip1/release");
    anyhow::ensure!(
        plugin_dir.join("shop_edge.wasm").is_file(),
        "{} has no shop_edge.wasm: `make plugins`",
        plugin_dir.display()
    );
    let core = args.server_core;
    let dir_s = dir.display().to_string();
    // The origin's certificate (ECDSA P-256, from its test CA) for both HTTPS listeners.
    let (cert, key) = (
        ca.with_file_name("server.pem"),
        ca.with_file_name("server.key"),
    );
    let start_edge =
        |name: &str, plugins: &str, tls_listen: SocketAddr| -> anyhow::Result<(Server, PathBuf)> {
            let listen = free_addr()?;
            let yaml = peers::render(
                "edge.yaml",
                &[
                    ("dir", dir_s.clone()),
                    ("name", name.to_string()),
                    ("listen", listen.to_string()),
                    ("admin", free_addr()?.to_string()),
                    ("origin", origin.to_string()),
                    ("ca", ca.display().to_string()),
                    ("plugins", plugins.to_string()),
                    ("plugin_dir", plugin_dir.display().to_string()),
                    ("tls_listen", tls_listen.to_string()),
                    ("cert", cert.display().to_string()),
                    ("key", key.display().to_string()),
                ],
            )?;
            let config = dir.join(format!("{name}.yaml"));
            std::fs::write(&config, yaml)?;
            let log = dir.join(format!("{name}.log"));
            let args = ["run".to_string(), "-c".into(), config.display().to_string()];
            Ok((
                Server::spawn_pinned(name, listen, core, &edge_bin, &args, &log)?,
                log,
            ))
        };
    let edge_tls = free_addr()?;
    let (mut edge, edge_log) = start_edge("edge", "[]", edge_tls)?;
    let (mut edge_chain, chain_log) = start_edge("edge-chain", "[shop-edge]", free_addr()?)?;
    let nginx_tls = free_addr()?;

    let nginx_listen = free_addr()?;
    let backend = free_addr()?;
    // As root NGINX would switch its worker to `nobody`, which cannot write the harness's
    // temporary folder.
    let user = if std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        "user root;"
    } else {
        ""
    };
    let conf = peers::render(
        "nginx.conf",
        &[
            ("user", user.to_string()),
            ("dir", dir_s.clone()),
            ("listen", nginx_listen.to_string()),
            ("backend_listen", backend.to_string()),
            ("origin", origin.to_string()),
            ("ca", ca.display().to_string()),
            ("tls_listen", nginx_tls.to_string()),
            ("cert", cert.display().to_string()),
            ("key", key.display().to_string()),
        ],
    )?;
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(&nginx_conf, conf)?;
    let nginx_log = dir.join("nginx.log");
    let nginx_args = [
        "-p".to_string(),
        dir_s.clone(),
        "-e".into(),
        dir.join("nginx-error.log").display().to_string(),
        "-c".into(),
        nginx_conf.display().to_string(),
    ];
    let mut nginx = Server::spawn_pinned(
        "NGINX",
        nginx_listen,
        core,
        &peers::find_program("nginx")?,
        &nginx_args,
        &nginx_log,
    )?;

    let varnish_listen = free_addr()?;
    let vcl = peers::render(
        "varnish.vcl",
        &[("backend_port", backend.port().to_string())],
    )?;
    let vcl_path = dir.join("varnish.vcl");
    std::fs::write(&vcl_path, vcl)?;
    let varnish_log = dir.join("varnish.log");
    let varnish_args = [
        "-F".to_string(),
        "-j".into(),
        "none".into(),
        "-n".into(),
        dir.join("varnish").display().to_string(),
        "-a".into(),
        varnish_listen.to_string(),
        "-f".into(),
        vcl_path.display().to_string(),
        "-s".into(),
        "malloc,256m".into(),
        "-p".into(),
        "thread_pools=1".into(),
    ];
    let mut varnish = Server::spawn_pinned(
        "Varnish",
        varnish_listen,
        core,
        &peers::find_program("varnishd")?,
        &varnish_args,
        &varnish_log,
    )?;

    let ready = Duration::from_secs(60);
    edge.wait_listening(&edge_log, ready).await?;
    edge_chain.wait_listening(&chain_log, ready).await?;
    nginx.wait_listening(&nginx_log, ready).await?;
    varnish.wait_listening(&varnish_log, ready).await?;
    Ok(Servers {
        edge,
        edge_chain,
        nginx,
        varnish,
        edge_tls,
        nginx_tls,
    })
}

/// One measured run of `target`: its server's CPU over the measured window.
async fn measure(target: &Target, client_core: usize) -> anyhow::Result<Round> {
    let (pid, warmup) = (target.pid, target.spec.warmup);
    let before = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        (
            proc_cpu::tree_cpu_ns(pid),
            proc_cpu::core_ticks(client_core),
        )
    });
    let result = load::run(target.spec.clone()).await?;
    let after = (
        proc_cpu::tree_cpu_ns(pid),
        proc_cpu::core_ticks(client_core),
    );
    let before = before.await?;
    Ok(Round {
        cpu_us: after.0.saturating_sub(before.0) as f64 / 1e3 / result.ok.max(1) as f64,
        client_busy: proc_cpu::busy_percent(before.1, after.1),
        result,
    })
}

/// `rounds` rounds over `targets`, each round starting one target further on.
async fn alternate(
    targets: &[Target],
    rounds: usize,
    client_core: usize,
) -> anyhow::Result<Vec<Vec<Round>>> {
    let mut measured: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for offset in 0..targets.len() {
            let index = (round - 1 + offset) % targets.len();
            let target = &targets[index];
            let r = measure(target, client_core).await?;
            println!(
                "  round {round:>2}  {:<14} {:<24} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  {:>6.2} CPU-us/req  hits {:>5.1}%  client core {:>5.1}%  errors {}",
                target.workload.title(),
                target.peer.title(),
                r.result.throughput(),
                r.result.percentile_ms(0.50),
                r.result.percentile_ms(0.99),
                r.cpu_us,
                100.0 * r.result.hit_ratio(),
                r.client_busy,
                r.result.errors
            );
            measured[index].push(r);
        }
    }
    Ok(measured)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians of one target's rounds.
#[derive(Debug, Clone, Copy)]
struct Summary {
    throughput: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    cpu_min: f64,
    cpu_max: f64,
    hit_ratio: f64,
    client_busy: f64,
    errors: u64,
}

fn summarize(rounds: &[Round]) -> Summary {
    let pick = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_us).collect();
    Summary {
        throughput: pick(&|r| r.result.throughput()),
        p50: pick(&|r| r.result.percentile_ms(0.50)),
        p99: pick(&|r| r.result.percentile_ms(0.99)),
        cpu_us: median(cpu.clone()),
        cpu_min: cpu.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_max: cpu.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        hit_ratio: pick(&|r| r.result.hit_ratio()),
        client_busy: pick(&|r| r.client_busy),
        errors: rounds.iter().map(|r| r.result.errors).sum(),
    }
}

/// The median over rounds of each round's ratio `pick(a) / pick(b)` (they ran seconds apart,
/// so the machine's slow drifts cancel in the pair).
fn paired(a: &[Round], b: &[Round], pick: impl Fn(&Round) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| pick(x) / pick(y)).collect())
}

/// A Markdown table of `targets`' rounds, ratios against NGINX on the same workload.
fn table(targets: &[Target], measured: &[Vec<Round>]) -> String {
    let mut out = String::from(
        "| workload | server | req/s | x NGINX | p50 ms | p99 ms | CPU µs/req (min-max) | CPU x NGINX | hits | client core busy | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (target, rounds) in targets.iter().zip(measured) {
        let s = summarize(rounds);
        let nginx = targets
            .iter()
            .position(|t| t.workload == target.workload && t.peer == Peer::Nginx);
        let (x_req, x_cpu) = match nginx {
            Some(n) if target.peer != Peer::Nginx => (
                format!(
                    "{:.2}",
                    paired(rounds, &measured[n], |r| r.result.throughput())
                ),
                format!("{:.2}", paired(rounds, &measured[n], |r| r.cpu_us)),
            ),
            _ => ("".into(), "".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {x_req} | {:.3} | {:.3} | {:.1} ({:.1}-{:.1}) | {x_cpu} | {:.0}% | {:.0}% | {} |\n",
            target.workload.title(),
            target.peer.title(),
            s.throughput,
            s.p50,
            s.p99,
            s.cpu_us,
            s.cpu_min,
            s.cpu_max,
            100.0 * s.hit_ratio,
            s.client_busy,
            s.errors
        ));
    }
    out
}

/// The cipher suite every server of each TLS workload negotiates with the load client: the
/// comparison holds only if they are the same ("TLS 1.3 full handshake: TLS13_AES_128_GCM_SHA256").
async fn same_cipher_suites(targets: &[Target]) -> anyhow::Result<Vec<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut seen: Vec<(Workload, String, &'static str)> = Vec::new();
    for target in targets.iter().filter(|t| t.workload.tls()) {
        let Some(suite) = load::negotiated_suite(&target.spec).await? else {
            continue;
        };
        if let Some((_, other, peer)) = seen.iter().find(|(w, _, _)| *w == target.workload) {
            anyhow::ensure!(
                *other == suite,
                "{}: {} negotiates {suite}, {peer} {other}: not the same cipher suite",
                target.workload.title(),
                target.peer.title()
            );
            continue;
        }
        lines.push(format!("{}: {suite}", target.workload.title()));
        seen.push((target.workload, suite, target.peer.title()));
    }
    Ok(lines)
}

/// Checks every server answers the hit and fetch paths with the origin's bytes, then requests
/// every path of the mix once through each, so the measured rounds start from a warm cache.
async fn check_and_warm(
    targets: &[Target],
    origin: &LoadSpec,
    mix: &[String],
) -> anyhow::Result<()> {
    for path in [HIT_PATH, FETCH_PATH] {
        let expected = load::fetch_once(&LoadSpec {
            path_and_query: path.into(),
            ..origin.clone()
        })
        .await?;
        // Byte checks speak HTTP/1.1 on one connection (hyper): the h2 and handshake targets
        // share their listener with the HTTPS h1 one.
        let checked = |t: &&Target| {
            t.workload != Workload::Mix && t.spec.transport == load::Transport::KeepAlive
        };
        for target in targets.iter().filter(checked) {
            let body = load::fetch_once(&LoadSpec {
                path_and_query: path.into(),
                ..target.spec.clone()
            })
            .await
            .with_context(|| format!("{} on {path}", target.peer.title()))?;
            anyhow::ensure!(
                body == expected,
                "{} answered {path} with other bytes than the origin ({} B, origin {} B)",
                target.peer.title(),
                body.len(),
                expected.len()
            );
        }
    }
    let mut warmed = Vec::new();
    for target in targets
        .iter()
        .filter(|t| t.spec.transport == load::Transport::KeepAlive)
    {
        if warmed.contains(&target.spec.addr) {
            continue;
        }
        warmed.push(target.spec.addr);
        let paths = Arc::new(mix.to_vec());
        let spec = LoadSpec {
            connections: 4,
            ..target.spec.clone()
        };
        let ok = load::fill(
            spec,
            paths.len() as u64,
            Arc::new(move |i| paths[i as usize].clone()),
        )
        .await?;
        anyhow::ensure!(
            ok == mix.len() as u64,
            "{}: {ok} of {} mix paths answered 200",
            target.peer.title(),
            mix.len()
        );
    }
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Not available_parallelism: this process is pinned to one core.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn version_of(program: &str, flag: &str) -> String {
    peers::find_program(program)
        .ok()
        .and_then(|p| std::process::Command::new(p).arg(flag).output().ok())
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_else(|| format!("{program}: unknown version"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = rig::start_origin(
        dir.path(),
        &format!(
            "database: {{ seed_products: {} }}\ncache_control: {{ products_s_maxage: 1h, product_s_maxage: 1h }}",
            args.products
        ),
    )
    .await?;
    let origin_addr = origin.origin.local_addr();
    let mut origin_spec = spec(&args, origin_addr, HIT_PATH)?;
    origin_spec.tls = Some(load::client_tls(&origin.ca)?);
    let mix = discover_mix(&origin_spec, args.products).await?;
    let servers = start_servers(&args, dir.path(), origin_addr, &origin.ca).await?;

    let target = |workload: Workload, peer: Peer| -> anyhow::Result<Target> {
        let server = match peer {
            Peer::Edge => &servers.edge,
            Peer::EdgeChain => &servers.edge_chain,
            Peer::Nginx => &servers.nginx,
            Peer::Varnish => &servers.varnish,
        };
        let addr = match (workload.tls(), peer) {
            (true, Peer::Nginx) => servers.nginx_tls,
            (true, _) => servers.edge_tls,
            (false, _) => server.listen,
        };
        let mut spec = spec(
            &args,
            addr,
            if workload == Workload::Fetch {
                FETCH_PATH
            } else {
                HIT_PATH
            },
        )?;
        if workload == Workload::Mix {
            spec.mix = mix.clone();
        }
        if workload.tls() {
            let tls12 = matches!(workload, Workload::Tls12Full | Workload::Tls12Resumed);
            let mut tls = if tls12 {
                (*load::client_tls_versions(&origin.ca, &[&rustls::version::TLS12])?).clone()
            } else {
                (*load::client_tls(&origin.ca)?).clone()
            };
            tls.alpn_protocols = vec![if workload == Workload::H2Hit {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            if matches!(workload, Workload::TlsFull | Workload::Tls12Full) {
                tls.resumption = rustls::client::Resumption::disabled();
            }
            spec.tls = Some(Arc::new(tls));
            spec.transport = match workload {
                Workload::H2Hit => load::Transport::H2,
                Workload::TlsFull
                | Workload::TlsResumed
                | Workload::Tls12Full
                | Workload::Tls12Resumed => load::Transport::NewConnection,
                _ => load::Transport::KeepAlive,
            };
        }
        Ok(Target {
            workload,
            peer,
            spec,
            pid: server.pid(),
        })
    };
    let all = vec![
        target(Workload::Hit, Peer::Edge)?,
        target(Workload::Hit, Peer::EdgeChain)?,
        target(Workload::Hit, Peer::Nginx)?,
        target(Workload::Hit, Peer::Varnish)?,
        target(Workload::Fetch, Peer::Edge)?,
        target(Workload::Fetch, Peer::Nginx)?,
        target(Workload::Mix, Peer::Edge)?,
        target(Workload::Mix, Peer::EdgeChain)?,
        target(Workload::Mix, Peer::Nginx)?,
        target(Workload::HttpsHit, Peer::Edge)?,
        target(Workload::HttpsHit, Peer::Nginx)?,
        target(Workload::H2Hit, Peer::Edge)?,
        target(Workload::H2Hit, Peer::Nginx)?,
        target(Workload::TlsFull, Peer::Edge)?,
        target(Workload::TlsFull, Peer::Nginx)?,
        target(Workload::TlsResumed, Peer::Edge)?,
        target(Workload::TlsResumed, Peer::Nginx)?,
        target(Workload::Tls12Full, Peer::Edge)?,
        target(Workload::Tls12Full, Peer::Nginx)?,
        target(Workload::Tls12Resumed, Peer::Edge)?,
        target(Workload::Tls12Resumed, Peer::Nginx)?,
    ];
    let chosen = |w: Workload| {
        args.workloads
            .iter()
            .any(|x| x == w.name() || x == w.single_name())
    };
    let targets: Vec<Target> = all.into_iter().filter(|t| chosen(t.workload)).collect();
    anyhow::ensure!(
        !targets.is_empty(),
        "--workloads: choose among hit, fetch, mix, https, h2, handshakes (or tls13-full, tls13-resumed, tls12-full, tls12-resumed)"
    );
    check_and_warm(&targets, &origin_spec, &mix).await?;
    let suites = same_cipher_suites(&targets).await?;
    let detail_share = mix.iter().filter(|p| !p.contains('?')).count() as f64 / mix.len() as f64;
    println!(
        "peers: servers on core {}, load client and origin on core {}; {} connections; {} rounds of {}s after {}s warm-up; mix of {} paths ({:.0}% product details, uncached; the rest listings of every page of every category, cached)",
        args.server_core, args.client_core, args.connections, args.rounds, args.seconds, args.warmup, mix.len(), 100.0 * detail_share
    );
    println!("closed loop:");
    let closed = alternate(&targets, args.rounds, args.client_core).await?;

    let mut report = format!(
        "# edge-proxy against NGINX and Varnish\n\n{} · {}\n\n{} · {} · edge-proxy {}\n\n\
         Each server on core {} (one worker), the load client and the origin on core {}; {} keep-alive connections; \
         {} alternating rounds of {} s after {} s of warm-up; CPU is the server process tree's (schedstat). \
         Cache hit: `{HIT_PATH}`. Origin fetch: `{FETCH_PATH}`, uncached, pooled verified TLS to the origin. \
         Mix: {} paths, {:.0}% product details (uncached), the rest every listing page of every category (cached). \
         HTTPS (edge-proxy without plugins, NGINX): the origin's ECDSA P-256 certificate on both, a rustls client (TLS 1.3), \
         the cache-hit path over keep-alive HTTP/1.1 and HTTP/2 (one stream in flight per connection); handshakes: a new connection \
         per request (`Connection: close`), full (client resumption off) or resumed (session tickets): req/s is connections/s, CPU per connection. \
         Ratios are medians of per-round pairs.{}\n\n## Closed loop (capacity)\n\n{}",
        chrono_free_date(),
        machine(),
        version_of("nginx", "-v"),
        version_of("varnishd", "-V"),
        git_revision(),
        args.server_core,
        args.client_core,
        args.connections,
        args.rounds,
        args.seconds,
        args.warmup,
        mix.len(),
        100.0 * detail_share,
        if suites.is_empty() {
            String::new()
        } else {
            format!(
                " Cipher suite negotiated, the same on every server (the server's order): {}.",
                suites.join("; ")
            )
        },
        table(&targets, &closed),
    );

    if args.paced_load > 0.0 {
        let mut paced_targets = Vec::new();
        let mut rates = Vec::new();
        // The same offered load for every server of a workload: `paced_load` of NGINX's
        // capacity, but at most 80% of the slowest server's, so none is driven past saturation
        // (where latency only measures the queue).
        for target in &targets {
            let capacity = |peer: Option<Peer>| {
                targets
                    .iter()
                    .zip(&closed)
                    .filter(|(t, _)| {
                        t.workload == target.workload && peer.is_none_or(|p| t.peer == p)
                    })
                    .map(|(_, rounds)| summarize(rounds).throughput)
                    .fold(f64::INFINITY, f64::min)
            };
            let rate = (args.paced_load * capacity(Some(Peer::Nginx))).min(0.8 * capacity(None));
            rates.push((target.workload, rate));
            paced_targets.push(Target {
                workload: target.workload,
                peer: target.peer,
                spec: LoadSpec {
                    rate: Some(rate),
                    ..target.spec.clone()
                },
                pid: target.pid,
            });
        }
        println!(
            "open loop at {:.0}% of NGINX's capacity per workload (at most 80% of the slowest server's):",
            100.0 * args.paced_load
        );
        let open = alternate(&paced_targets, args.rounds, args.client_core).await?;
        rates.dedup_by(|a, b| a.0 == b.0);
        let rates: Vec<String> = rates
            .iter()
            .map(|(w, r)| format!("{} {r:.0} req/s", w.title()))
            .collect();
        report.push_str(&format!(
            "\n## Open loop (the same offered load for every server of a workload: {:.0}% of NGINX's capacity, at most 80% of the slowest server's; {})\n\n{}",
            100.0 * args.paced_load,
            rates.join(", "),
            table(&paced_targets, &open)
        ));
    }

    let chain_share = {
        let position = |peer| {
            targets
                .iter()
                .position(|t| t.workload == Workload::Mix && t.peer == peer)
        };
        match (position(Peer::Edge), position(Peer::EdgeChain)) {
            (Some(e), Some(c)) => {
                let (edge, chain) = (summarize(&closed[e]).cpu_us, summarize(&closed[c]).cpu_us);
                format!(
                    "\nThe shipped chain's share of the mix's CPU per request: {:.1} of {:.1} µs ({:.0}%).\n",
                    chain - edge,
                    chain,
                    100.0 * (chain - edge) / chain
                )
            }
            _ => String::new(),
        }
    };
    report.push_str(&chain_share);
    for peer in [Peer::Edge, Peer::Nginx] {
        let cpu = |workload| {
            targets
                .iter()
                .position(|t| t.workload == workload && t.peer == peer)
                .map(|i| summarize(&closed[i]).cpu_us)
        };
        for (version, full, resumed) in [
            ("1.3", Workload::TlsFull, Workload::TlsResumed),
            ("1.2", Workload::Tls12Full, Workload::Tls12Resumed),
        ] {
            if let (Some(full), Some(resumed)) = (cpu(full), cpu(resumed)) {
                report.push_str(&format!(
                    "\n{}, TLS {version}: a connection with a full handshake costs {full:.1} µs of CPU, with a resumed one {resumed:.1} µs ({:.2}x cheaper).\n",
                    peer.title(),
                    full / resumed
                ));
            }
        }
    }

    std::fs::create_dir_all(&args.out)?;
    let bars: Vec<Bar> = targets
        .iter()
        .zip(&closed)
        .map(|(t, rounds)| {
            let s = summarize(rounds);
            Bar {
                label: format!("{} · {}", t.workload.title(), t.peer.title()),
                colour: t.peer as usize,
                cpu_us: s.cpu_us,
                kreq_s: s.throughput / 1000.0,
            }
        })
        .collect();
    let svg = args.out.join("peers.svg");
    chart::write_svg(
        &svg,
        &format!(
            "closed loop, medians of {} rounds · {}",
            args.rounds,
            chrono_free_date()
        ),
        &bars,
    )?;
    let md = args.out.join("peers.md");
    std::fs::write(&md, &report)?;
    println!("\n{report}\nwrote {} and {}", md.display(), svg.display());
    drop(servers);
    Ok(())
}

/// Today's date (UTC) from `date`, so the report needs no date crate.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "(no git)".into())
}
