//! Several instances as one through a real `redis-server` (started here on an ephemeral
//! loopback port, persistence off, stopped after): a `scope: cluster` rate-limit rule across
//! three proxies allows what one bucket allows; with Redis killed mid-run, requests keep
//! flowing on local limits (no 5xx, `edge_cluster_connected` 0), and the cluster view comes
//! back by itself when Redis does. A purge on one instance reaches the others, and instances
//! that cannot know what they missed drop their cache. Edges in front of a shield edge fetch
//! each key from the origin once, and `X-Cache` shows both tiers. A stalled Redis costs no
//! request; an instance cut off alone replays the purges it missed. Redis over TLS with an ACL
//! user: the right login leases, a wrong password or server name falls back to local limits.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    catalog_upstream, free_port, plugin_wasm, proxy_yaml, start_counting_echo, Origin, Proxy,
};

const TOKEN: &str = "test-purge-token-0123456789";

/// A `redis-server` child process on a loopback port, killed on drop.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        let server = Self::spawn(&["--port", &port.to_string()], port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping().await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not answer on {}", server.addr);
    }

    /// A Redis serving TLS only on a free port, with `extra` settings (ACL users, say); ready
    /// once it accepts connections.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args = vec![
            "--port".to_string(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Self::spawn(&args, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(server.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn spawn(listen: &[&str], port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // `DEBUG SLEEP` plays a Redis that stalls.
                "--enable-debug-command",
                "local",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by `make setup`)");
        Self {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child: Some(child),
        }
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut tcp) = tokio::net::TcpStream::connect(self.addr).await else {
            return false;
        };
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").await.is_ok()
            && tcp.read_exact(&mut answer).await.is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Sends one raw command (inline form) and waits for its answer.
    pub async fn command(&self, line: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = vec![0u8; 512];
        let n = tcp.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP forwarder to Redis that can cut one instance off: `cut` closes every connection it
/// carries and closes new ones on arrival, `restore` forwards again.
struct Forwarder {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let task = {
            let (open, cuts) = (open.clone(), cuts.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            open,
            cuts,
            task,
        }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// A proxy in front of `echo` whose `/echo/` route runs the rate-limit plugin with one
/// cluster rule, syncing with `redis` every 100 ms.
fn instance(echo: SocketAddr, redis: SocketAddr, rate: f64, burst: u64) -> Proxy {
    instance_with(echo, redis, rate, burst, "")
}

/// [`instance`] with more `redis:` settings (`extra`: `key: value, ` pairs).
fn instance_with(echo: SocketAddr, redis: SocketAddr, rate: f64, burst: u64, extra: &str) -> Proxy {
    instance_at(echo, &redis.to_string(), rate, burst, extra)
}

/// [`instance_with`] with `redis.addresses` as given (a YAML list's items).
fn instance_at(echo: SocketAddr, addresses: &str, rate: f64, burst: u64, extra: &str) -> Proxy {
    Proxy::start(|dir| {
        format!(
            "{}redis: {{ {extra}addresses: [{addresses}], sync_interval: 100ms, on_unavailable: local_share }}\n\
             plugins:\n  - name: limit\n    module: {wasm}\n    config:\n      rules:\n        \
             - {{ name: shared, path_prefix: /echo/, rate_per_second: {rate}, burst: {burst}, scope: cluster }}\n",
            proxy_yaml(
                dir,
                &format!("  echo:\n    addresses: [{echo}]\n"),
                "  - { name: echo, path_prefix: /echo/, upstream: echo, plugins: [limit] }",
            ),
            wasm = plugin_wasm("rate_limit").display(),
        )
    })
}

/// Sends `per_second` requests a second to each proxy for `span`; counts by status class
/// (2xx, 429, 5xx or failed), and the time from the first request to the last.
async fn load(proxies: &[Proxy], per_second: u64, span: Duration) -> (u64, u64, u64, Duration) {
    let tick = Duration::from_millis(50);
    let per_tick = (per_second as f64 * tick.as_secs_f64()).round() as u64;
    let started = Instant::now();
    let (mut ok, mut limited, mut failed) = (0, 0, 0);
    let mut next = started;
    while started.elapsed() < span {
        let requests = proxies.iter().flat_map(|p| {
            (0..per_tick).map(move |_| async move {
                match p.http.get(p.url("/echo/item")).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                }
            })
        });
        for status in futures::future::join_all(requests).await {
            match status {
                200..=299 => ok += 1,
                429 => limited += 1,
                _ => failed += 1,
            }
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    (ok, limited, failed, started.elapsed())
}

/// Waits (up to 5 s) until every proxy's `edge_cluster_connected` is `connected`.
async fn all_connected(proxies: &[Proxy], connected: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in proxies {
        loop {
            let value = p.metric("edge_cluster_connected").await;
            if value == connected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "edge_cluster_connected stayed {value}, not {connected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Three instances, one cluster rule of 40 req/s with a burst of 20, each instance offered
/// 60 req/s: together they allow what one bucket allows (burst + rate x time, within 10%),
/// where three local buckets would allow three times that. Then Redis dies: no 5xx, local
/// limits (each instance a third of the rule); Redis comes back: the cluster view too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rule_holds_across_three_instances_and_survives_redis_going_away() {
    let mut redis = RedisServer::start().await;
    let echo = start_counting_echo().await;
    let (rate, burst) = (40.0, 20);
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| instance(echo.addr, redis.addr, rate, burst))
        .collect();
    all_connected(&proxies, 1.0).await;
    for p in &proxies {
        assert_eq!(
            p.eventually_metric("edge_cluster_instances", 3.0).await,
            3.0
        );
    }

    let (ok, limited, failed, took) = load(&proxies, 60, Duration::from_secs(4)).await;
    let one_bucket = burst as f64 + rate * took.as_secs_f64();
    eprintln!(
        "cluster rule: {ok} allowed, {limited} refused, {failed} failed in {took:?}; one bucket allows {one_bucket:.0}"
    );
    assert_eq!(failed, 0);
    assert!(
        (ok as f64 - one_bucket).abs() <= 0.1 * one_bucket,
        "{ok} allowed across three instances; one bucket allows {one_bucket:.0}"
    );
    // Redis operations: at most one lease renewal per bucket per instance per sync interval.
    let renewals: f64 = {
        let mut sum = 0.0;
        for p in &proxies {
            sum += p
                .metric(r#"edge_cluster_redis_commands_total{kind="lease",result="ok"}"#)
                .await;
        }
        sum
    };
    let intervals = (took.as_secs_f64() / 0.1).ceil() + 10.0;
    assert!(
        renewals <= 3.0 * intervals,
        "{renewals} lease renewals for {intervals} sync intervals"
    );

    // Redis goes away mid-run.
    let port = redis.addr.port();
    redis.kill();
    all_connected(&proxies, 0.0).await;
    let (ok, limited, failed, took) = load(&proxies, 60, Duration::from_secs(2)).await;
    eprintln!("Redis away: {ok} allowed, {limited} refused, {failed} failed in {took:?}");
    assert_eq!(failed, 0, "no 5xx because Redis is away");
    assert!(limited > 0, "local limits still refuse");
    // Each instance: a third of the rule (local_share), its burst a third of 20.
    let local_bound = 3.0 * ((burst / 3) as f64 + rate / 3.0 * took.as_secs_f64());
    assert!(
        ok as f64 <= local_bound * 1.1 + 3.0,
        "{ok} allowed on local shares (bound {local_bound:.0})"
    );

    // Redis is back: so is the cluster view, within a few sync intervals.
    let back = Instant::now();
    let _redis = RedisServer::start_on(port).await;
    all_connected(&proxies, 1.0).await;
    eprintln!("cluster view back {:?} after Redis", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(5));
    for p in proxies {
        p.stop().await;
    }
}

/// A caching proxy in front of the catalog origin, sharing purges through `redis`.
fn cached_instance(origin: &Origin, redis: SocketAddr) -> Proxy {
    let addr = origin.origin.local_addr();
    Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &catalog_upstream(addr, &origin.ca, ""),
            "  - { name: catalog, path_prefix: /api/, upstream: catalog, cache: { key_query_params: [category, limit], tag_query_param: category } }",
        ) + &format!(
            "cache: {{ purge_token: {TOKEN} }}\nredis: {{ addresses: [{redis}], sync_interval: 100ms }}\n"
        )
    })
}

async fn x_cache(p: &Proxy, path: &str) -> String {
    let r = p.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.headers()["x-cache"].to_str().unwrap().to_string()
}

/// `POST /cache/purge` on instance 1 removes the page from instances 2 and 3 and says all
/// three applied it; after Redis restarts without its data, each instance cannot know which
/// purges it missed and drops its whole cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_reaches_every_instance() {
    let mut redis = RedisServer::start().await;
    let origin = Origin::start(100, "").await;
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| cached_instance(&origin, redis.addr))
        .collect();
    all_connected(&proxies, 1.0).await;
    for p in &proxies {
        assert_eq!(
            p.eventually_metric("edge_cluster_instances", 3.0).await,
            3.0
        );
    }
    let path = "/api/v1/products?category=polo&limit=5";
    for p in &proxies {
        assert_eq!(x_cache(p, path).await, "MISS");
        assert_eq!(x_cache(p, path).await, "HIT");
    }
    let answer: serde_json::Value = proxies[0]
        .http
        .post(format!("{}/cache/purge?category=polo", proxies[0].admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["purged"], 1, "{answer}");
    assert_eq!(answer["instances"]["acknowledged"], 3, "{answer}");
    assert_eq!(answer["instances"]["alive"], 3, "{answer}");
    for p in &proxies {
        assert_eq!(x_cache(p, path).await, "MISS", "purged everywhere");
        assert_eq!(x_cache(p, path).await, "HIT");
    }

    // Redis restarts empty: the purge stream the instances had read is gone.
    let port = redis.addr.port();
    redis.kill();
    all_connected(&proxies, 0.0).await;
    let _redis = RedisServer::start_on(port).await;
    all_connected(&proxies, 1.0).await;
    for p in &proxies {
        assert_eq!(
            p.eventually_metric(r#"edge_cache_purges_total{kind="all"}"#, 1.0)
                .await,
            1.0,
            "the cache was dropped"
        );
        assert_eq!(x_cache(p, path).await, "MISS");
    }
    for p in proxies {
        p.stop().await;
    }
}

const CACHED_ROUTE: &str = "  - { name: catalog, path_prefix: /api/, upstream: catalog, cache: { key_query_params: [category, limit], tag_query_param: category } }";

/// A GET with the site's Host: behind one load balancer every edge sees the same one.
async fn get_as_site(edge: &Proxy, path: &str) -> reqwest::Response {
    edge.http
        .get(edge.url(path))
        .header("host", "shop.example")
        .send()
        .await
        .unwrap()
}

/// Three edges whose upstream is a shield edge in front of the origin; 50 concurrent cold
/// requests for one key on each edge: one origin fetch in all. `X-Cache` shows both tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_behind_a_shield_fetch_a_key_from_the_origin_once() {
    let origin = Origin::start(100, "").await;
    let addr = origin.origin.local_addr();
    let shield =
        Proxy::start(|dir| proxy_yaml(dir, &catalog_upstream(addr, &origin.ca, ""), CACHED_ROUTE));
    let shield_addr = shield.base.trim_start_matches("http://").to_string();
    let edges: Vec<Proxy> = (0..3)
        .map(|_| {
            Proxy::start(|dir| {
                proxy_yaml(
                    dir,
                    &format!("  catalog:\n    addresses: [{shield_addr}]\n    shield: true\n"),
                    CACHED_ROUTE,
                )
            })
        })
        .collect();
    let listings = r#"origin_http_requests_total{route="products",status="200"}"#;
    let before = origin.metric(listings).await;
    let path = "/api/v1/products?category=polo&limit=5";
    let requests = edges.iter().flat_map(|edge| {
        (0..50).map(move |_| async move {
            let r = get_as_site(edge, path).await;
            assert_eq!(r.status(), 200);
            let x_cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (x_cache, r.bytes().await.unwrap())
        })
    });
    let answers = futures::future::join_all(requests).await;
    assert_eq!(
        origin.metric(listings).await - before,
        1.0,
        "one origin fetch for 3 x 50 cold requests"
    );
    let body = &answers[0].1;
    assert!(
        answers.iter().all(|(_, b)| b == body),
        "the same bytes everywhere"
    );
    assert!(
        answers.iter().all(|(x, _)| x.ends_with(" from shield")),
        "{:?}",
        answers.iter().map(|(x, _)| x).collect::<Vec<_>>()
    );
    // Each edge went to the shield once: its own waiters were coalesced.
    let shield_misses = shield
        .eventually_metric(
            r#"edge_cache_lookups_total{result="MISS",route="catalog"}"#,
            1.0,
        )
        .await;
    assert_eq!(shield_misses, 1.0);
    let shield_lookups: f64 = shield
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("edge_cache_lookups_total{") && l.contains("route=\"catalog\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        shield_lookups, 3.0,
        "one request per edge reached the shield"
    );
    // An edge hit remembers what the shield said when the entry was filled.
    for edge in &edges {
        let r = get_as_site(edge, path).await;
        let x_cache = r.headers()["x-cache"].to_str().unwrap();
        assert!(
            x_cache == "HIT, MISS from shield" || x_cache == "HIT, HIT from shield",
            "{x_cache}"
        );
    }
    for p in edges {
        p.stop().await;
    }
    shield.stop().await;
}

/// Redis stalls (`DEBUG SLEEP`: every command waits past `command_timeout`) while requests
/// flow (one instance reaches Redis at the second of its `addresses`, the first dead): none fails or waits on Redis, the cluster view is reported lost, and it comes back
/// by itself when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_no_request_and_the_view_comes_back() {
    let redis = RedisServer::start().await;
    let echo = start_counting_echo().await;
    // The second instance lists a dead address first: it goes on to the next one.
    let dead = format!("127.0.0.1:{}", free_port());
    let proxies = vec![
        instance(echo.addr, redis.addr, 1000.0, 1000),
        instance_at(
            echo.addr,
            &format!("{dead}, {}", redis.addr),
            1000.0,
            1000,
            "",
        ),
    ];
    all_connected(&proxies, 1.0).await;
    let sleeper = {
        let redis_addr = redis.addr;
        tokio::spawn(async move {
            let redis = RedisServer {
                addr: redis_addr,
                child: None,
            };
            redis.command("DEBUG SLEEP 2").await
        })
    };
    // Requests during the stall: each answered without waiting on Redis.
    let started = Instant::now();
    let (mut failed, mut slowest, mut answered) = (0, Duration::ZERO, 0);
    let mut lost_seen = false;
    while started.elapsed() < Duration::from_millis(1800) {
        for p in &proxies {
            let sent = Instant::now();
            match p.http.get(p.url("/echo/item")).send().await {
                Ok(r) if r.status() == 200 || r.status() == 429 => answered += 1,
                _ => failed += 1,
            }
            slowest = slowest.max(sent.elapsed());
        }
        if !lost_seen && proxies[0].metric("edge_cluster_connected").await == 0.0 {
            lost_seen = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("Redis stalled: {answered} answered, {failed} failed, slowest {slowest:?}");
    assert_eq!(failed, 0, "no request fails because Redis stalls");
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} on a stalled Redis"
    );
    assert!(lost_seen, "edge_cluster_connected never dropped to 0");
    assert!(sleeper.await.unwrap().starts_with("+OK"));
    all_connected(&proxies, 1.0).await;
    for p in proxies {
        p.stop().await;
    }
}

/// One instance alone loses Redis (its connections cut) while another purges: the purge
/// answer counts the instances that applied it; the cut-off instance, back, replays the purge
/// it missed from the stream (Redis still holds it), so it drops that page and keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_alone_replays_the_purges_it_missed() {
    let redis = RedisServer::start().await;
    let origin = Origin::start(100, "").await;
    let forwarder = Forwarder::start(redis.addr).await;
    let proxies: Vec<Proxy> = vec![
        cached_instance(&origin, redis.addr),
        cached_instance(&origin, redis.addr),
        cached_instance(&origin, forwarder.addr),
    ];
    all_connected(&proxies, 1.0).await;
    for p in &proxies {
        assert_eq!(
            p.eventually_metric("edge_cluster_instances", 3.0).await,
            3.0
        );
    }
    let (polo, tee) = (
        "/api/v1/products?category=polo&limit=5",
        "/api/v1/products?category=tee&limit=5",
    );
    for p in &proxies {
        for path in [polo, tee] {
            assert_eq!(x_cache(p, path).await, "MISS");
        }
    }
    let cut_off = &proxies[2];
    forwarder.cut();
    all_connected(std::slice::from_ref(cut_off), 0.0).await;
    let answer: serde_json::Value = proxies[0]
        .http
        .post(format!("{}/cache/purge?category=polo", proxies[0].admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["instances"]["acknowledged"], 2, "{answer}");
    assert_eq!(answer["instances"]["reached_redis"], true, "{answer}");
    assert_eq!(x_cache(&proxies[1], polo).await, "MISS", "purged on 2");
    assert_eq!(
        x_cache(cut_off, polo).await,
        "HIT",
        "not reached while cut off"
    );

    forwarder.restore();
    all_connected(std::slice::from_ref(cut_off), 1.0).await;
    let replayed = cut_off
        .eventually_metric(r#"edge_cache_purges_total{kind="category"}"#, 1.0)
        .await;
    assert_eq!(replayed, 1.0, "the missed purge was replayed");
    assert_eq!(x_cache(cut_off, polo).await, "MISS");
    assert_eq!(
        x_cache(cut_off, tee).await,
        "HIT",
        "the rest of the cache kept"
    );
    assert_eq!(
        cut_off
            .metric(r#"edge_cache_purges_total{kind="all"}"#)
            .await,
        0.0,
        "nothing dropped wholesale: Redis still held what it missed"
    );
    for p in proxies {
        p.stop().await;
    }
}

/// Redis over TLS (the test CA) with an ACL user: the instance logs in and leases tokens;
/// with a wrong password, or a server name the certificate lacks, it reports the cluster view
/// lost and serves on local limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::client_tls::Pki::new(dir.path(), "redis");
    let (cert, key) = pki.server("redis", &["localhost"], false);
    let redis = RedisServer::start_tls(
        &cert,
        &key,
        &pki.ca_file,
        &[
            "--user",
            "default",
            "off",
            "--user",
            "edge",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
        ],
    )
    .await;
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, "s3cret-pass\n").unwrap();
    std::fs::write(&wrong, "not-it\n").unwrap();
    let echo = start_counting_echo().await;
    // An instance logging in with `password` and checking `server_name` in the certificate.
    let start = |password: &Path, server_name: &str| {
        let settings = format!(
            "tls: {{ ca_file: {}, server_name: {server_name} }}, username: edge, password_file: {}, ",
            pki.ca_file.display(),
            password.display()
        );
        instance_with(echo.addr, redis.addr, 1000.0, 100, &settings)
    };
    let member = start(&right, "localhost");
    let refused = start(&wrong, "localhost");
    // The right password, but a name the certificate does not carry: the handshake fails.
    let misnamed = start(&right, "other.example");
    all_connected(std::slice::from_ref(&member), 1.0).await;
    let leased = r#"edge_cluster_rate_limit_decisions_total{decision="lease"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while member.metric(leased).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no request was served on a lease"
        );
        assert_eq!(member.get("/echo/item").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for outsider in [&refused, &misnamed] {
        for _ in 0..5 {
            assert_eq!(outsider.get("/echo/item").await.status(), 200);
        }
        assert_eq!(outsider.metric("edge_cluster_connected").await, 0.0);
        assert!(
            outsider
                .metric(r#"edge_cluster_rate_limit_decisions_total{decision="local"}"#)
                .await
                >= 5.0
        );
        assert_eq!(
            outsider
                .metric(r#"edge_cluster_redis_commands_total{kind="heartbeat",result="ok"}"#)
                .await,
            0.0
        );
    }
    for p in [member, refused, misnamed] {
        p.stop().await;
    }
}
