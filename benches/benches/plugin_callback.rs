#![allow(clippy::expect_used)] // benchmark setup: a failure here is a broken setup, reported at once
//! Host overhead of proxy-wasm callbacks with the no-op plugin (criterion): one
//! `on_request_headers` round trip on a live context (VM lock, exchange and header swap,
//! epoch deadline, guest call, swap back), the bare guest call, and a whole request's plugin
//! lifecycle (context create, request and response headers, a body chunk, done/log/delete).
//!
//! The production plugins (auth, rate-limit, metrics-export) get the same whole-request
//! measurement, alone and chained. And a plugin that holds a response body until its end
//! (the `conformance` plugin's `hold-response`): 16 MiB in 64 KiB chunks, where each chunk
//! used to copy everything held so far (quadratic).
//!
//! `cargo bench -p edge-benches --bench plugin_callback` (builds the plugins first:
//! `make plugins`).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edge_proxy::metrics::Metrics;
use edge_proxy::plugin::callout::Callouts;
use edge_proxy::plugin::chain::{Chain, Outcome};
use edge_proxy::plugin::host::RunningPlugin;
use edge_proxy::plugin::{FailureMode, HostSettings, PluginHost, PluginSpec};
use pingora::http::{RequestHeader, ResponseHeader};

fn module(name: &str) -> std::path::PathBuf {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../plugins/target/wasm32-wasip1/release/{name}.wasm"
    ));
    assert!(
        module.is_file(),
        "run `make plugins` first: {} is missing",
        module.display()
    );
    module
}

fn spec(name: &str, wasm: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        module: module(wasm),
        config: if config.is_null() {
            Vec::new()
        } else {
            config.to_string().into_bytes()
        },
        vm_config: Vec::new(),
        failure_mode: FailureMode::Closed,
        vms: 1,
        memory_bytes: 64 << 20,
        max_body_bytes: 8 << 20,
        cpu_deadline: Duration::from_millis(100),
        allowed_upstreams: Vec::new(),
        root_id: name.into(),
    }
}

fn host(specs: &[PluginSpec]) -> PluginHost {
    let settings = HostSettings {
        module_cache_dir: None,
        shared_data_max_bytes: 1 << 20,
        shared_data_ttl_by_prefix: Vec::new(),
    };
    PluginHost::start(specs, &settings, Arc::new(Metrics::new())).expect("the plugins start")
}

fn noop_host() -> PluginHost {
    host(&[spec("noop", "noop", serde_json::Value::Null)])
}

const API_KEY: &str = "bench-key-0123456789abcdef";

/// auth (API key), rate-limit (never refusing), metrics-export, and the same three merged
/// (shop-edge, the shipped chain).
fn production_host() -> PluginHost {
    host(&[
        spec(
            "auth",
            "auth",
            serde_json::json!({"api_keys": [{"client_id": "bench", "key": API_KEY}]}),
        ),
        spec(
            "rate-limit",
            "rate_limit",
            serde_json::json!({"rules": [{"name": "all", "rate_per_second": 1_000_000, "burst": 1_000_000_000u64}]}),
        ),
        spec(
            "metrics-export",
            "metrics_export",
            serde_json::json!({"categories": ["polo"], "client_classes": {"bench": "internal"}}),
        ),
        spec(
            "shop-edge",
            "shop_edge",
            serde_json::json!({
                "auth": {"api_keys": [{"client_id": "bench", "key": API_KEY}]},
                "rate_limit": {"rules": [{"name": "all", "rate_per_second": 1_000_000, "burst": 1_000_000_000u64}]},
                "metrics": {"categories": ["polo"], "client_classes": {"bench": "internal"}},
            }),
        ),
    ])
}

fn request() -> RequestHeader {
    let mut request = RequestHeader::build("GET", b"/api/v1/products?category=polo", None)
        .expect("valid request");
    for (name, value) in [
        ("host", "edge.local"),
        ("accept", "application/json"),
        ("user-agent", "bench"),
    ] {
        request.insert_header(name, value).expect("valid header");
    }
    request
}

/// No callout upstreams, and a current-thread runtime to drive the chain's async phases.
fn driver() -> (Callouts, tokio::runtime::Runtime) {
    let callouts = Callouts::new(HashMap::new(), &Default::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (callouts, runtime)
}

fn callbacks(c: &mut Criterion) {
    let host = noop_host();
    let (callouts, runtime) = driver();
    let plugins = host.plugins.clone();

    let route = [0];
    let mut live = Chain::new(&plugins, &route, "bench".into(), None, None);
    let mut req = request();
    assert_eq!(
        runtime.block_on(live.request_headers(&plugins, &mut req, &callouts)),
        Outcome::Continue
    );
    c.bench_function("on_request_headers round trip (noop, live context)", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    black_box(live.request_headers(&plugins, &mut req, &callouts).await);
                }
                started.elapsed()
            })
        });
    });

    // The guest call alone (VM lock, deadline, call, call metrics): what the chain adds on top
    // is the exchange and header swap.
    let plugin = plugins[0].clone();
    let context = {
        let mut guard = plugin.lock(0).expect("VM");
        guard
            .vm()
            .expect("live VM")
            .create_http_context()
            .expect("context")
    };
    c.bench_function(
        "bare guest call (proxy_on_request_headers, no exchange)",
        |b| {
            b.iter(|| {
                let mut guard = plugin.lock(0).expect("VM");
                let vm = guard.vm().expect("live VM");
                black_box(vm.on_request_headers(context, 7, true).expect("no fault"))
            });
        },
    );

    lifecycle(c, &runtime, &callouts, &plugins, &route, "noop");
    drop(live);
}

/// A whole request through each production plugin alone and through the three in a chain
/// (request and response headers, one response body chunk, done/log/delete), hit-shaped.
fn production(c: &mut Criterion) {
    let host = production_host();
    let (callouts, runtime) = driver();
    let plugins = host.plugins.clone();
    for (label, route) in [
        ("auth", vec![0]),
        ("rate-limit", vec![1]),
        ("metrics-export", vec![2]),
        ("auth -> rate-limit -> metrics-export", vec![0, 1, 2]),
        ("shop-edge (merged)", vec![3]),
    ] {
        lifecycle(c, &runtime, &callouts, &plugins, &route, label);
    }
}

/// One hit-shaped request through `route` (API key sent, `X-Cache: HIT` answered): context
/// creation, request and response headers, one response body chunk, done/log/delete. The
/// headers are the proxy's, not the chain's: built off the clock.
fn lifecycle(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    callouts: &Callouts,
    plugins: &[Arc<RunningPlugin>],
    route: &[usize],
    label: &str,
) {
    c.bench_function(&format!("request lifecycle: {label}"), |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let mut req = request();
                    req.insert_header("x-api-key", API_KEY)
                        .expect("valid header");
                    let mut resp = ResponseHeader::build(200, None).expect("valid response");
                    resp.insert_header("x-cache", "HIT").expect("valid header");
                    let started = Instant::now();
                    let mut chain = Chain::new(plugins, route, "bench".into(), None, None);
                    let outcome = chain.request_headers(plugins, &mut req, callouts).await;
                    assert_eq!(outcome, Outcome::Continue);
                    black_box(
                        chain
                            .response_headers(plugins, &mut req, &mut resp, callouts)
                            .await,
                    );
                    let body = Some(bytes::Bytes::from_static(b"[]"));
                    black_box(chain.response_body(plugins, &mut req, body, true).ok());
                    chain.finish(plugins, &mut req, Some(200));
                    spent += started.elapsed();
                }
                spent
            })
        });
    });
}

/// A 16 MiB response body in 64 KiB chunks through a plugin that holds it to the end, then
/// rewrites it: the host's buffering must stay linear in the body size.
fn held_body(c: &mut Criterion) {
    let mut holder = spec(
        "holder",
        "conformance",
        serde_json::json!({"greeting": "hi"}),
    );
    holder.memory_bytes = 128 << 20;
    holder.max_body_bytes = 32 << 20;
    // Reading and rewriting 16 MiB in the guest, off the host's clock but not off the deadline.
    holder.cpu_deadline = Duration::from_secs(5);
    let host = host(&[holder]);
    let (callouts, runtime) = driver();
    let plugins = host.plugins.clone();
    let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
    let chunks = 256;
    let mut group = c.benchmark_group("held response body");
    group.sample_size(10);
    group.bench_function("16 MiB in 64 KiB chunks (hold-response)", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let mut req = request();
                    req.insert_header("x-probe", "hold-response")
                        .expect("valid header");
                    let mut resp = ResponseHeader::build(200, None).expect("valid response");
                    let started = Instant::now();
                    let mut chain = Chain::new(&plugins, &[0], "bench".into(), None, None);
                    let _ = chain.request_headers(&plugins, &mut req, &callouts).await;
                    let _ = chain
                        .response_headers(&plugins, &mut req, &mut resp, &callouts)
                        .await;
                    for i in 0..chunks {
                        let end = i + 1 == chunks;
                        let step =
                            chain.response_body(&plugins, &mut req, Some(chunk.clone()), end);
                        if let Err(failed) = &step {
                            panic!("the plugin failed: {}", failed.details);
                        }
                        black_box(step.ok());
                    }
                    chain.finish(&plugins, &mut req, Some(200));
                    spent += started.elapsed();
                }
                spent
            })
        });
    });
    group.finish();
}

criterion_group!(benches, callbacks, production, held_body);
criterion_main!(benches);
