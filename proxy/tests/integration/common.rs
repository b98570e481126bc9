//! Test rig: origin, echo upstream, proxy, clients and metric readers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_proxy::RunningProxy;
use origin_service::config::OriginConfig;
use origin_service::RunningOrigin;

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Origin {
    pub origin: RunningOrigin,
    pub ca: PathBuf,
    pub https: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Origin {
    /// A catalog of `products`; `overrides` is YAML deep-merged over the test defaults.
    pub async fn start(products: u32, overrides: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin.yaml");
        let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "listen: 127.0.0.1:0\nstate_dir: state\nhttp: {{ shutdown_grace: 1s }}\n\
             database: {{ seed_products: {products}, pool: {{ max_connections: 4, min_idle: 1 }} }}\n"
        ))
        .unwrap();
        if !overrides.trim().is_empty() {
            merge(&mut yaml, serde_yaml_ng::from_str(overrides).unwrap());
        }
        std::fs::write(&path, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
        let origin = origin_service::start(OriginConfig::load(&path).unwrap())
            .await
            .unwrap();
        let ca = origin.ca_file().unwrap().to_path_buf();
        let https = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap(),
            )
            .no_proxy()
            .build()
            .unwrap();
        Self {
            origin,
            ca,
            https,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://127.0.0.1:{}{path}",
            self.origin.local_addr().port()
        )
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.https, &self.url("/metrics"), series).await
    }
}

fn merge(base: &mut serde_yaml_ng::Value, overrides: serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match (base, overrides) {
        (Value::Mapping(base), Value::Mapping(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// One series read from the Prometheus text served at `url`.
pub async fn metric_at(http: &reqwest::Client, url: &str, series: &str) -> f64 {
    let text = http.get(url).send().await.unwrap().text().await.unwrap();
    read_metric(&text, series)
}

/// Polls `url`'s series every 10 ms, up to 5 s, until it reaches `expected`; the last value.
pub async fn eventually_metric_at(
    http: &reqwest::Client,
    url: &str,
    series: &str,
    expected: f64,
) -> f64 {
    let mut value = metric_at(http, url, series).await;
    for _ in 0..500 {
        if value >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        value = metric_at(http, url, series).await;
    }
    value
}

pub fn read_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// A plain-HTTP upstream answering every request with its method, path, headers and body as JSON.
/// Query parameters `h-<name>=<value>` become response headers, `status=<code>` sets the
/// status, `chunked=1` sends the body in two chunks (no Content-Length), `big=N` sends N bytes
/// of `x` instead (chunked), `delay_ms=N` answers after N ms; `hits` counts requests.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn start_echo() -> SocketAddr {
    start_counting_echo().await.addr
}

pub async fn start_counting_echo() -> Echo {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        use http_body_util::BodyExt;
                        let (req, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                            .collect();
                        let body = serde_json::json!({
                            "method": req.method.as_str(),
                            "path": req.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                            "hit": n,
                        });
                        let query = req.uri.query().unwrap_or_default().to_string();
                        if let Some((_, ms)) = form_urlencoded_pairs(&query)
                            .into_iter()
                            .find(|(k, _)| k == "delay_ms")
                        {
                            let ms = ms.parse::<u64>().unwrap();
                            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        }
                        let body = bytes::Bytes::from(body.to_string());
                        let big = form_urlencoded_pairs(&query)
                            .into_iter()
                            .find(|(k, _)| k == "big")
                            .map(|(_, n)| n.parse::<usize>().unwrap());
                        // `big=N`: N bytes of `x` in 64 KiB frames (chunked);
                        // `chunked=1`: the body in two frames, so it goes out chunked.
                        let mut response = if let Some(size) = big {
                            let frames = (0..size.div_ceil(65536)).map(move |i| {
                                let len = 65536.min(size - i * 65536);
                                Ok::<_, Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                                    vec![b'x'; len],
                                )))
                            });
                            http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(
                                futures::stream::iter(frames),
                            )))
                        } else if query.contains("chunked=1") {
                            let half = body.len() / 2;
                            let frames = [body.slice(..half), body.slice(half..)]
                                .map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b)));
                            http::Response::new(BodyExt::boxed(http_body_util::StreamBody::new(
                                futures::stream::iter(frames),
                            )))
                        } else {
                            http::Response::new(BodyExt::boxed(http_body_util::Full::new(body)))
                        };
                        if let Some((_, code)) = form_urlencoded_pairs(&query)
                            .into_iter()
                            .find(|(k, _)| k == "status")
                        {
                            *response.status_mut() =
                                code.parse::<u16>().unwrap().try_into().unwrap();
                        }
                        let h = response.headers_mut();
                        h.insert("connection", "keep-alive, x-upstream-hop".parse().unwrap());
                        h.insert("x-upstream-hop", "secret".parse().unwrap());
                        h.insert("keep-alive", "timeout=5".parse().unwrap());
                        for (k, v) in form_urlencoded_pairs(&query) {
                            if let Some(name) = k.strip_prefix("h-") {
                                h.append(
                                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Echo { addr, hits }
}

fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%20", " ")
                    .replace("%2C", ",")
                    .replace("%3D", "="),
            )
        })
        .collect()
}

/// The `.wasm` of test plugin `name`, building every plugin under `plugins/` once per test
/// binary (release, wasm32-wasip1; cargo skips it when nothing changed).
pub fn plugin_wasm(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // shop-edge in its own invocation, as `make plugins` builds it (features unify).
        for only in [None, Some("shop-edge")] {
            let mut command = std::process::Command::new(&cargo);
            command
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip1",
                    "--manifest-path",
                ])
                .arg(root.join("Cargo.toml"));
            if let Some(package) = only {
                command.args(["-p", package]);
            }
            let status = command.status().expect("cargo runs");
            assert!(
                status.success(),
                "building the plugins under plugins/ failed"
            );
        }
    });
    root.join("target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"))
}

/// The `.wasm` of the AssemblyScript plugin in `plugins/<dir>`, built once per test binary
/// with its locked npm packages and its `npm run build` (as `make plugins` does).
pub fn assemblyscript_wasm(dir: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let project = root.join(dir);
    BUILT.get_or_init(|| {
        let npm = |args: &[&str]| {
            let status = std::process::Command::new("npm")
                .args(args)
                .current_dir(&project)
                .status()
                .expect("npm runs (make setup installs it)");
            assert!(
                status.success(),
                "npm {args:?} in {} failed",
                project.display()
            );
        };
        if !project.join("node_modules").is_dir() {
            npm(&["ci", "--no-audit", "--no-fund"]);
        }
        std::fs::create_dir_all(root.join("target/wasm32-wasip1/release")).unwrap();
        npm(&["run", "build"]);
    });
    root.join("target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"))
}

pub struct Proxy {
    pub proxy: Option<RunningProxy>,
    pub http: reqwest::Client,
    pub base: String,
    pub admin: String,
    _dir: tempfile::TempDir,
}

/// `upstreams` is the YAML body of the `upstreams:` mapping; routes as `- {...}` lines.
pub fn proxy_yaml(dir: &Path, upstreams: &str, routes: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period: 0s, graceful_shutdown_timeout: 2s, upgrade_sock: {sock} }}\n\
         listen: 127.0.0.1:{listen}\n\
         access_log: off\n\
         admin: {{ listen: 127.0.0.1:{admin} }}\n\
         upstreams:\n{upstreams}\n\
         routes:\n{routes}\n",
        sock = dir.join("upgrade.sock").display(),
        listen = free_port(),
        admin = free_port(),
    )
}

/// The catalog upstream pointing at `addr` over TLS, trusting `ca`.
pub fn catalog_upstream(addr: SocketAddr, ca: &Path, extra: &str) -> String {
    format!(
        "  catalog:\n    addresses: [{addr}]\n    tls: {{ sni: localhost, ca_file: {} }}\n{extra}",
        ca.display()
    )
}

impl Proxy {
    pub fn start(build_yaml: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let yaml = build_yaml(dir.path());
        let config = edge_proxy::config::from_yaml(&yaml, dir.path()).unwrap();
        let proxy = RunningProxy::start(config).unwrap();
        let base = format!("http://{}", proxy.listen);
        let admin = format!("http://{}", proxy.admin);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            proxy: Some(proxy),
            http,
            base,
            admin,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Waits (up to 5 s) until a series reaches `expected`: the `logging` phase that counts a
    /// request runs after its response has reached the client. Returns the last value read.
    pub async fn eventually_metric(&self, series: &str, expected: f64) -> f64 {
        let url = format!("{}/metrics", self.admin);
        eventually_metric_at(&self.http, &url, series, expected).await
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("{}/metrics", self.admin);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn metric(&self, series: &str) -> f64 {
        read_metric(&self.metrics_text().await, series)
    }

    /// Stops the proxy without blocking the async runtime.
    pub async fn stop(mut self) {
        if let Some(proxy) = self.proxy.take() {
            tokio::task::spawn_blocking(move || proxy.stop())
                .await
                .unwrap();
        }
    }
}
