//! A closed-loop load generator: `connections` workers, each on its own keep-alive (TLS)
//! connection, sending GETs back to back for `warmup + duration`; only the measured window counts.
//! The measured loop speaks through [`crate::wire`] (HTTP/1.1), the `h2` crate (HTTP/2, one
//! stream in flight per connection), or opens a new connection per request (handshake cost);
//! requests whose bytes are compared use hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::wire;

/// What to load and how hard.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub path_and_query: String,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `None` speaks plain HTTP.
    pub tls: Option<Arc<ClientConfig>>,
    /// `None`: closed loop, each connection sends its next request as soon as the previous
    /// response is read (measures capacity). `Some(r)`: open loop, `r` requests per second
    /// spread evenly over the connections (measures latency at a given load).
    pub rate: Option<f64>,
    /// Extra request headers (name, value), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// A workload of several paths: when not empty, each connection sends these in turn
    /// (starting at its own offset, so connections spread over the list) instead of
    /// `path_and_query`. Repeat a path to weight it.
    pub mix: Vec<String>,
    pub transport: Transport,
}

/// How each worker reaches the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// One keep-alive HTTP/1.1 connection per worker (TLS when `tls` is set).
    #[default]
    KeepAlive,
    /// One HTTP/2 connection per worker (`tls` must offer ALPN h2), one stream in flight.
    H2,
    /// A new connection (TCP, and the TLS handshake when `tls` is set) for every request,
    /// `Connection: close`: what a request costs is then mostly its handshake. Whether TLS
    /// sessions resume is the client config's (`resumption`).
    NewConnection,
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub ok: u64,
    /// Successful responses marked `X-Cache: HIT...`.
    pub hits: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests in the measured window, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Share of the successful responses that were cache hits.
    pub fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.ok.max(1) as f64
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A client TLS config trusting only the CA in `ca_pem_file` (session resumption on, as default).
pub fn client_tls(ca_pem_file: &std::path::Path) -> anyhow::Result<Arc<ClientConfig>> {
    client_tls_versions(ca_pem_file, rustls::DEFAULT_VERSIONS)
}

/// As [`client_tls`], speaking only `versions`.
pub fn client_tls_versions(
    ca_pem_file: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem_file)
        .with_context(|| format!("reading {}", ca_pem_file.display()))?
    {
        roots.add(cert?)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

type Sender = http1::SendRequest<Empty<Bytes>>;

/// A connected byte stream to the target (TLS when the spec says so).
async fn open(spec: &LoadSpec) -> anyhow::Result<Box<dyn wire::Io>> {
    let tcp = TcpStream::connect(spec.addr).await?;
    tcp.set_nodelay(true)?;
    let Some(tls) = &spec.tls else {
        return Ok(Box::new(tcp));
    };
    let tls = TlsConnector::from(tls.clone())
        .connect(spec.server_name.clone(), tcp)
        .await?;
    Ok(Box::new(tls))
}

/// The cipher suite a TLS target negotiates with this client (`None`: plain TCP).
pub async fn negotiated_suite(spec: &LoadSpec) -> anyhow::Result<Option<String>> {
    let Some(tls) = &spec.tls else {
        return Ok(None);
    };
    let tcp = TcpStream::connect(spec.addr).await?;
    let stream = TlsConnector::from(tls.clone())
        .connect(spec.server_name.clone(), tcp)
        .await?;
    Ok(stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite())))
}

/// A hyper client connection, for the requests whose bytes are checked.
async fn connect(spec: &LoadSpec) -> anyhow::Result<Sender> {
    let (sender, connection) = http1::handshake(TokioIo::new(open(spec).await?)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A lean connection for the measured loop.
async fn connect_wire(spec: &LoadSpec) -> anyhow::Result<wire::Connection> {
    let request = wire::get_request(&spec.addr.to_string(), &spec.path_and_query, &spec.headers);
    Ok(wire::Connection::new(open(spec).await?, request))
}

/// What a worker sends its requests over.
enum Channel {
    Wire(wire::Connection),
    H2(h2::client::SendRequest<Bytes>, Arc<LoadSpec>),
    /// A request (with `Connection: close`) for a new connection each time.
    Fresh(Arc<LoadSpec>, Bytes),
}

impl Channel {
    async fn open(spec: &Arc<LoadSpec>) -> anyhow::Result<Self> {
        Ok(match spec.transport {
            Transport::KeepAlive => Channel::Wire(connect_wire(spec).await?),
            Transport::H2 => {
                let (sender, connection) = h2::client::handshake(open(spec).await?).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Channel::H2(sender, spec.clone())
            }
            Transport::NewConnection => {
                let mut headers = spec.headers.clone();
                headers.push(("connection".into(), "close".into()));
                let request =
                    wire::get_request(&spec.addr.to_string(), &spec.path_and_query, &headers);
                Channel::Fresh(spec.clone(), Bytes::from(request))
            }
        })
    }

    fn set_request(&mut self, request: Bytes) {
        if let Channel::Wire(connection) = self {
            connection.set_request(request);
        }
    }

    async fn roundtrip(&mut self) -> anyhow::Result<wire::Response> {
        match self {
            Channel::Wire(connection) => connection.roundtrip().await,
            Channel::Fresh(spec, request) => {
                let mut connection = wire::Connection::new(open(spec).await?, request.clone());
                let mut response = connection.roundtrip().await?;
                response.closing = false;
                Ok(response)
            }
            Channel::H2(sender, spec) => {
                let scheme = if spec.tls.is_some() { "https" } else { "http" };
                let mut request =
                    http::Request::get(format!("{scheme}://{}{}", spec.addr, spec.path_and_query));
                for (name, value) in &spec.headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let mut ready = sender.clone().ready().await?;
                let (response, _) = ready.send_request(request.body(())?, true)?;
                let response = response.await?;
                let status = response.status().as_u16();
                let cache_hit = response
                    .headers()
                    .get("x-cache")
                    .is_some_and(|v| v.as_bytes().starts_with(b"HIT"));
                let mut body = response.into_body();
                let mut body_len = 0;
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    body_len += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Ok(wire::Response {
                    status,
                    body_len,
                    closing: false,
                    cache_hit,
                })
            }
        }
    }
}

/// One GET of the spec's path; returns the response body when the status is 200.
pub async fn get(sender: &mut Sender, spec: &LoadSpec) -> anyhow::Result<Bytes> {
    get_path(sender, spec, &spec.path_and_query).await
}

/// One GET of `path`; returns the response body when the status is 200.
pub async fn get_path(sender: &mut Sender, spec: &LoadSpec, path: &str) -> anyhow::Result<Bytes> {
    let mut request = http::Request::get(path).header(http::header::HOST, spec.addr.to_string());
    for (name, value) in &spec.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new())?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status == http::StatusCode::OK, "status {status}");
    Ok(body)
}

/// Fetches the target once (to check it works and to copy its bytes).
pub async fn fetch_once(spec: &LoadSpec) -> anyhow::Result<Bytes> {
    let mut sender = connect(spec).await?;
    get(&mut sender, spec).await
}

/// When each request of one worker is due, for an open-loop run.
struct Pacer {
    interval: Duration,
    next: Instant,
    /// When the previous response arrived.
    previous_done: Instant,
}

impl Pacer {
    /// Worker `index` of `workers` sharing `rate` requests per second, staggered.
    fn new(rate: f64, index: usize, workers: usize, start: Instant) -> Self {
        let interval = Duration::from_secs_f64(workers as f64 / rate.max(f64::MIN_POSITIVE));
        let offset = interval.mul_f64(index as f64 / workers as f64);
        Self {
            interval,
            next: start + offset,
            previous_done: start,
        }
    }

    /// Waits until the next request is due; returns the instant its latency counts from. When
    /// the previous response came back after this request was due, the server made it late and
    /// the wait counts (no coordinated omission); when only the timer fired late (tokio timers
    /// have millisecond granularity), it does not.
    async fn wait_turn(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        tokio::time::sleep_until(due.into()).await;
        if self.previous_done > due {
            due
        } else {
            Instant::now()
        }
    }
}

/// The serialized requests of a spec's mix (empty without one).
fn mix_requests(spec: &LoadSpec) -> Arc<[Bytes]> {
    let host = spec.addr.to_string();
    spec.mix
        .iter()
        .map(|path| Bytes::from(wire::get_request(&host, path, &spec.headers)))
        .collect()
}

async fn worker(
    spec: Arc<LoadSpec>,
    mix: Arc<[Bytes]>,
    index: usize,
    start: Instant,
) -> anyhow::Result<LoadResult> {
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut hits, mut errors) = (0, 0, 0);
    let mut connection = Channel::open(&spec).await?;
    // Spread the connections over the mix: worker i starts i/n of the way through it.
    let mut next_in_mix = index * mix.len() / spec.connections.max(1);
    let mut pacer = spec
        .rate
        .map(|rate| Pacer::new(rate, index, spec.connections, start));
    loop {
        let sent = match pacer.as_mut() {
            Some(pacer) => pacer.wait_turn().await,
            None => Instant::now(),
        };
        if sent >= end {
            break;
        }
        if !mix.is_empty() {
            connection.set_request(mix[next_in_mix % mix.len()].clone());
            next_in_mix += 1;
        }
        let outcome = connection.roundtrip().await;
        let done = Instant::now();
        if let Some(pacer) = pacer.as_mut() {
            pacer.previous_done = done;
        }
        let measured = sent >= measure_from;
        let reconnect = match outcome {
            Ok(response) if response.status == 200 => {
                if measured {
                    ok += 1;
                    hits += u64::from(response.cache_hit);
                    histogram.saturating_record(done.duration_since(sent).as_micros() as u64);
                }
                response.closing
            }
            Ok(response) => {
                errors += u64::from(measured);
                response.closing
            }
            Err(_) => {
                errors += u64::from(measured);
                true
            }
        };
        if reconnect {
            connection = Channel::open(&spec).await?;
        }
    }
    Ok(LoadResult {
        ok,
        hits,
        errors,
        elapsed: spec.duration,
        latency_us: histogram,
    })
}

/// Runs the load and merges every worker's counts and latencies.
pub async fn run(spec: LoadSpec) -> anyhow::Result<LoadResult> {
    let spec = Arc::new(spec);
    let mix = mix_requests(&spec);
    let start = Instant::now();
    let workers: Vec<_> = (0..spec.connections)
        .map(|index| tokio::spawn(worker(spec.clone(), mix.clone(), index, start)))
        .collect();
    let mut total = LoadResult {
        ok: 0,
        hits: 0,
        errors: 0,
        elapsed: spec.duration,
        latency_us: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    };
    for handle in workers {
        let part = handle.await??;
        total.ok += part.ok;
        total.hits += part.hits;
        total.errors += part.errors;
        total.latency_us.add(&part.latency_us)?;
    }
    Ok(total)
}

/// Sends `total` GETs of `path(i)` for i in 0..total over `spec.connections` keep-alive
/// connections; returns how many answered 200.
pub async fn fill(
    spec: LoadSpec,
    total: u64,
    path: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> anyhow::Result<u64> {
    let spec = Arc::new(spec);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..spec.connections)
        .map(|_| {
            let (spec, next, path) = (spec.clone(), next.clone(), path.clone());
            tokio::spawn(async move {
                let mut sender = connect(&spec).await?;
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return anyhow::Ok(ok);
                    }
                    match get_path(&mut sender, &spec, &path(i)).await {
                        Ok(_) => ok += 1,
                        Err(_) => sender = connect(&spec).await?,
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    for worker in workers {
        ok += worker.await??;
    }
    Ok(ok)
}
