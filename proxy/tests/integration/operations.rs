//! Operating the real `edge-proxy` binary with signals, as an operator does: graceful upgrade
//! (`run --upgrade` + SIGQUIT) and reload (SIGHUP).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, plugin_wasm, start_echo};

/// An `edge-proxy run` child process, killed when dropped.
pub struct ProxyProcess {
    pub child: Child,
}

impl ProxyProcess {
    pub fn spawn(config: &Path, upgrade: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edge-proxy"));
        command.args(["run", "-c"]).arg(config);
        if upgrade {
            command.arg("--upgrade");
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("edge-proxy did not exit within {limit:?}");
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_listening(addr: SocketAddr) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config file in `dir` routing `/` to `upstream` on fixed ports, the route running
/// `plugin_yaml`'s plugins when given.
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        }
    }

    /// `extra` goes at the top level (plugins, cache, ...); `route_extra` inside the route.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
        upstream: SocketAddr,
        extra: &str,
        route_extra: &str,
    ) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "server: {{ threads: 1, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: {sock}, upgrade_timeout: 3s }}\n\
                 listen: {listen}\n\
                 admin: {{ listen: {admin} }}\n\
                 upstreams:\n  echo: {{ addresses: [{upstream}] }}\n\
                 {extra}\
                 routes:\n  - {{ name: echo, path_prefix: /, upstream: echo{route_extra} }}\n",
                sock = dir.join("upgrade.sock").display(),
                listen = self.listen,
                admin = self.admin,
            ),
        )
        .unwrap();
        path
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn status(http: &reqwest::Client, addr: SocketAddr, path: &str) -> u16 {
    http.get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The new process's plugin rejects its configuration: it exits 78 without taking the sockets,
/// and the SIGQUIT the operator sends the old one is refused: the old one keeps serving. Then a
/// good upgrade still hands over.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_that_cannot_start_leaves_the_old_process_serving() {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let good = ports.write(dir.path(), "good.yaml", echo, "", "");
    let wasm = plugin_wasm("conformance");
    let bad = ports.write(
        dir.path(),
        "bad.yaml",
        echo,
        &format!(
            "plugins:\n  - {{ name: picky, module: {}, config: {{ reject: true }} }}\n",
            wasm.display()
        ),
        ", plugins: [picky]",
    );
    let mut old = ProxyProcess::spawn(&good, false);
    wait_listening(ports.listen);
    let http = client();
    assert_eq!(status(&http, ports.listen, "/a").await, 200);

    let mut new = ProxyProcess::spawn(&bad, true);
    old.signal("QUIT");
    let quit = Instant::now();
    let code = tokio::task::spawn_blocking(move || new.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, Some(78), "the new process fails its plugin config");
    // The old one waits its upgrade_timeout (3 s) for a successor, then serves on. Without that
    // wait Pingora would retry handing its sockets over for 5 s, wait 5 s more and drain: look
    // well past all of it.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(quit.elapsed())).await;
    assert!(old.running(), "the old process must not drain to nobody");
    for _ in 0..20 {
        assert_eq!(status(&http, ports.listen, "/still-here").await, 200);
    }

    // A good upgrade still hands the sockets over.
    let mut successor = ProxyProcess::spawn(&good, true);
    old.signal("QUIT");
    let code = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(successor.running());
    assert_eq!(status(&http, ports.listen, "/after").await, 200);
    successor.signal("TERM");
}

async fn metric(http: &reqwest::Client, admin: SocketAddr, series: &str) -> f64 {
    crate::common::metric_at(http, &format!("http://{admin}/metrics"), series).await
}

/// Polls (up to 20 s) until `series` reaches `expected`.
async fn eventually(http: &reqwest::Client, admin: SocketAddr, series: &str, expected: f64) {
    for _ in 0..400 {
        if metric(http, admin, series).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{series} stayed at {} (expected {expected})",
        metric(http, admin, series).await
    );
}

/// An upstream that answers `slow` after 1.5 s.
async fn start_slow_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                    .await;
            });
        }
    });
    addr
}

const TOKEN: &str = "admin-token-0123456789abcdef";

/// SIGHUP reloads (it used to kill the process): routes move to a new upstream, the cache is
/// kept, a request in flight finishes on the old generation; an invalid file changes nothing;
/// `edge-proxy reload` does the same over the admin listener and names start-only settings.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_reload_swap_the_configuration_and_refuse_a_bad_one() {
    use crate::common::start_counting_echo;
    use std::sync::atomic::Ordering;
    let (first, second) = (start_counting_echo().await, start_counting_echo().await);
    let slow = start_slow_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let version = |upstream: SocketAddr, slow_route_to: SocketAddr| {
        format!(
            "admin: {{ listen: {admin}, token: {TOKEN} }}\n\
             upstreams:\n  echo: {{ addresses: [{upstream}] }}\n  slow: {{ addresses: [{slow_route_to}] }}\n\
             routes:\n\
             \x20 - {{ name: cached, path_prefix: /cached/, upstream: echo, cache: {{ default_ttl: 60s }} }}\n\
             \x20 - {{ name: slow, path_prefix: /slow, upstream: slow }}\n\
             \x20 - {{ name: echo, path_prefix: /, upstream: echo }}\n",
            admin = ports.admin,
        )
    };
    let path = dir.path().join("edge.yaml");
    let head = format!(
        "server: {{ threads: 1, grace_period: 1s, graceful_shutdown_timeout: 1s, upgrade_sock: {} }}\nlisten: {}\n",
        dir.path().join("upgrade.sock").display(),
        ports.listen
    );
    std::fs::write(&path, format!("{head}{}", version(first.addr, slow))).unwrap();
    let mut proxy = ProxyProcess::spawn(&path, false);
    wait_listening(ports.listen);
    let http = client();
    let cache_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let get = |p: &'static str| http.get(format!("http://{}{p}", ports.listen)).send();
    assert_eq!(
        cache_of(&get("/cached/page").await.unwrap()).as_deref(),
        Some("MISS")
    );
    assert_eq!(
        cache_of(&get("/cached/page").await.unwrap()).as_deref(),
        Some("HIT")
    );
    assert_eq!(
        metric(&http, ports.admin, "edge_config_generation").await,
        1.0
    );

    // A slow request in flight on generation 1 while the slow route moves away.
    let in_flight = tokio::spawn(get("/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        &path,
        format!("{head}{}", version(second.addr, second.addr)),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually(&http, ports.admin, "edge_config_generation", 2.0).await;
    assert!(proxy.running(), "SIGHUP must not end the process");
    let slow_answer = in_flight.await.unwrap().unwrap();
    assert_eq!(slow_answer.status(), 200);
    assert_eq!(
        slow_answer.text().await.unwrap(),
        "slow",
        "finished on generation 1"
    );
    let before = second.hits.load(Ordering::SeqCst);
    assert_eq!(get("/plain").await.unwrap().status(), 200);
    assert_eq!(
        second.hits.load(Ordering::SeqCst),
        before + 1,
        "new routes apply"
    );
    assert_eq!(
        cache_of(&get("/cached/page").await.unwrap()).as_deref(),
        Some("HIT"),
        "the cache survives a reload"
    );

    // An invalid file: refused, counted, nothing changes.
    std::fs::write(
        &path,
        format!("{head}{}", version(second.addr, second.addr))
            .replace("upstream: echo }", "upstream: nowhere }"),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually(
        &http,
        ports.admin,
        "edge_config_reloads_total{result=\"invalid\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&http, ports.admin, "edge_config_generation").await,
        2.0
    );
    assert_eq!(get("/plain").await.unwrap().status(), 200);
    assert!(proxy.running());

    // `edge-proxy reload`: invalid -> 78 with the problem; valid -> the new generation and
    // the start-only setting that differs.
    let cli = |path: PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_edge-proxy"))
                .args(["reload", "-c"])
                .arg(path)
                .output()
                .unwrap()
        })
    };
    let out = cli(path.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream `nowhere`"));
    std::fs::write(
        &path,
        format!("{head}{}", version(first.addr, first.addr)).replace("threads: 1", "threads: 3"),
    )
    .unwrap();
    let out = cli(path.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"generation\":3"), "{stdout}");
    assert!(stdout.contains("server.threads: 1 -> 3"), "{stdout}");
    let before = first.hits.load(Ordering::SeqCst);
    assert_eq!(get("/plain").await.unwrap().status(), 200);
    assert_eq!(first.hits.load(Ordering::SeqCst), before + 1);
    proxy.signal("TERM");
}

/// What the load clients saw.
#[derive(Debug, Default)]
struct Tally {
    ok: std::sync::atomic::AtomicUsize,
    errors: std::sync::atomic::AtomicUsize,
    last_error: std::sync::Mutex<String>,
}

/// One keep-alive client: a request at a time, a new connection when the proxy says close
/// (or an error happened). Every request must get a whole response.
async fn keepalive_client(
    addr: SocketAddr,
    id: usize,
    tally: std::sync::Arc<Tally>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp: Option<tokio::net::TcpStream> = None;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome: Result<bool, String> = async {
            if tcp.is_none() {
                tcp = Some(
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?,
                );
            }
            let stream = tcp.as_mut().ok_or("no stream")?;
            let request = format!("GET /load/{id}/{n} HTTP/1.1\r\nHost: edge.test\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                    .await
                    .map_err(|_| "response timed out".to_string())?
                    .map_err(|e| format!("read: {e}"))?;
                if read == 0 {
                    return Err(format!("closed after {} bytes of the response", buf.len()));
                }
                buf.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("no content-length in {head}"))?;
                if body.len() < length {
                    continue;
                }
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "status: {}",
                        head.lines().next().unwrap_or_default()
                    ));
                }
                return Ok(head.contains("connection: close"));
            }
        }
        .await;
        match outcome {
            Ok(close) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if close {
                    tcp = None;
                }
            }
            Err(why) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                *tally.last_error.lock().unwrap() = why;
                tcp = None;
            }
        }
    }
}

/// Regression: a QUIT + `--upgrade` handover under load lost a few keep-alive requests (13 read
/// errors in 333,545). Draining now closes each connection after a response (`Connection:
/// close`), between requests, never under one. Upgrades and reloads under steady keep-alive
/// load: not one error. 2 upgrades and 5 reloads by default; `EDGE_UPGRADES=10 EDGE_RELOADS=10`
/// runs the full measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_and_reloads_under_load_lose_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let config = ports.write(
        dir.path(),
        "edge.yaml",
        echo,
        &format!("cache: {{ purge_token: {TOKEN} }}\n"),
        "",
    );
    let mut current = ProxyProcess::spawn(&config, false);
    wait_listening(ports.listen);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|id| {
            tokio::spawn(keepalive_client(
                ports.listen,
                id,
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    for _ in 0..rounds("EDGE_UPGRADES", 2) {
        let successor = ProxyProcess::spawn(&config, true);
        current.signal("QUIT");
        let mut old = std::mem::replace(&mut current, successor);
        let code = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(code, Some(0));
        assert!(current.running());
    }
    for _ in 0..rounds("EDGE_RELOADS", 5) {
        current.signal("HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, errors) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    assert_eq!(
        errors,
        0,
        "{errors} errors in {} requests; last: {}",
        ok + errors,
        tally.last_error.lock().unwrap()
    );
    assert!(ok > 1000, "only {ok} requests answered");
    eprintln!("upgrades and reloads under load: {ok} requests, {errors} errors");
    current.signal("TERM");
}

/// Regressions: `run` printed that it listened before it did; a proxied request on a plugin
/// route logged Pingora's "Upstream body is already finished" warning (the request body
/// filter handed it an empty chunk after the end of a bodiless request). Now the line comes
/// once the port listens (a request sent right after it succeeds), and nothing is logged
/// at `warn` for well-formed traffic. And the log had ANSI colour codes when it went to a
/// pipe or a file (costly to write, and noise in any collector).
#[tokio::test(flavor = "multi_thread")]
async fn run_announces_when_ready_and_plugin_routes_log_no_spurious_warnings() {
    use std::io::{BufRead, Read};
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let plugins = format!(
        "plugins:\n  - {{ name: probe, module: {} }}\n",
        plugin_wasm("conformance").display()
    );
    let config = ports.write(
        dir.path(),
        "edge.yaml",
        echo,
        &plugins,
        ", plugins: [probe], cache: { enabled: true, default_ttl: 10s }",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-proxy"))
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line announces the port; the rest of stdout (the access log) is drained to
    // the end, so no write meets a closed pipe (which the proxy rightly warns about).
    let stdout = child.stdout.take().unwrap();
    let (first_line, announced) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = first_line.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = tokio::task::spawn_blocking(move || announced.recv().unwrap_or_default())
        .await
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let http = client();
    for _ in 0..5 {
        assert_eq!(status(&http, ports.listen, "/get").await, 200);
        let posted = http
            .post(format!("http://{}/post", ports.listen))
            .body("a body")
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut logged = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logged)
        .unwrap();
    assert!(!logged.contains("already finished"), "{logged}");
    // Not a terminal: plain text, no colour codes.
    assert!(logged.contains(" INFO "), "{logged}");
    assert!(!logged.contains('\x1b'), "{logged}");
    // (pingora-cache's one start-up note about compression dictionaries aside)
    let warnings = logged
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("pingora_cache::meta"));
    assert_eq!(warnings.count(), 0, "{logged}");
}
