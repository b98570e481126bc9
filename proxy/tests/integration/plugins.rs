//! proxy-wasm plugins through the real proxy: the `conformance` test plugin (built from
//! `plugins/` with the unmodified SDK) edits headers both ways, answers locally, calls out,
//! shares data across VMs, defines metrics, and traps, spins and allocates its way into faults
//! that stay contained.

use std::net::SocketAddr;

use crate::common::{plugin_wasm, start_counting_echo, Echo, Proxy};

/// A proxy whose `/closed/` route runs the plugin `probe` (failure_mode closed) and `/open/`
/// runs `probe-open` (failure_mode open), both in front of the echo upstream, which also
/// serves as the `authz` callout upstream.
/// With `ticks`, the `ticker` plugin (on `/ticks/`) ticks every 20 ms and calls the echo out.
fn start(echo: SocketAddr, vms: usize) -> Proxy {
    start_with(echo, vms, false)
}

fn start_with(echo: SocketAddr, vms: usize, ticks: bool) -> Proxy {
    let wasm = plugin_wasm("conformance");
    Proxy::start(|dir| {
        format!(
            "server: {{ threads: 2, grace_period: 0s, graceful_shutdown_timeout: 2s, upgrade_sock: {sock} }}\n\
             listen: 127.0.0.1:{listen}\n\
             access_log: off\n\
             admin: {{ listen: 127.0.0.1:{admin} }}\n\
             upstreams:\n  echo: {{ addresses: [{echo}] }}\n  authz: {{ addresses: [{echo}] }}\n\
             plugins:\n\
             \x20 - name: probe\n    module: {wasm}\n    config: {{ greeting: hello }}\n    vms: {vms}\n    allowed_upstreams: [authz]\n    limits: {{ memory_bytes: 33554432, cpu_deadline: 50ms, max_body_bytes: 1048576 }}\n\
             \x20 - name: probe-open\n    module: {wasm}\n    failure_mode: open\n    limits: {{ memory_bytes: 33554432, cpu_deadline: 50ms }}\n\
             \x20 - name: ticker\n    module: {wasm}\n    config: {{ tick_ms: {tick_ms}, tick_callout: true }}\n    vms: 1\n    allowed_upstreams: [authz]\n\
             routes:\n\
             \x20 - {{ name: closed, path_prefix: /closed/, upstream: echo, plugins: [probe] }}\n\
             \x20 - {{ name: open, path_prefix: /open/, upstream: echo, plugins: [probe-open] }}\n\
             \x20 - {{ name: ticks, path_prefix: /ticks/, upstream: echo, plugins: [ticker] }}\n",
            tick_ms = if ticks { 20 } else { 0 },
            sock = dir.join("upgrade.sock").display(),
            listen = crate::common::free_port(),
            admin = crate::common::free_port(),
            wasm = wasm.display(),
        )
    })
}

async fn probe(p: &Proxy, path: &str, probe: &str) -> reqwest::Response {
    p.http
        .get(p.url(path))
        .header("x-probe", probe)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_both_ways_config_properties_and_metrics() {
    let Echo { addr, .. } = start_counting_echo().await;
    let p = start(addr, 1);
    let response = p
        .http
        .get(p.url("/closed/items?h-x-drop-me=1"))
        .header("x-replace-me", "original")
        .header("x-remove-me", "please")
        .header("x-client", "c-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers().clone();
    assert_eq!(h["x-greeting"], "hello", "plugin config round trip");
    assert_eq!(h["x-plugin-response"], "yes");
    assert!(!h.contains_key("x-drop-me"), "response header removed");
    assert_eq!(h["x-seen-path"], "/closed/items?h-x-drop-me=1");
    assert_eq!(
        h["x-seen-client"], "c-42",
        "custom property set in one phase, read in another"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let seen = &body["headers"];
    assert_eq!(seen["x-plugin-seen"], "yes");
    assert_eq!(seen["x-replace-me"], "replaced");
    assert!(seen.get("x-remove-me").is_none(), "{seen}");
    let requests = r#"edge_plugin_conformance_requests_total{plugin="probe"}"#;
    assert_eq!(p.eventually_metric(requests, 1.0).await, 1.0);
    let calls = r#"edge_plugin_calls_total{callback="proxy_on_request_headers",plugin="probe"}"#;
    // Call metrics are published in batches (at most 100 ms late).
    assert_eq!(p.eventually_metric(calls, 1.0).await, 1.0);
    let logs = r#"edge_plugin_calls_total{callback="proxy_on_log",plugin="probe"}"#;
    assert_eq!(p.eventually_metric(logs, 1.0).await, 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_response_from_request_headers_never_reaches_the_upstream() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    let response = probe(&p, "/closed/secret", "deny").await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-denied-by"], "conformance");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "denied by plugin");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_infinite_loop_and_memory_bomb_are_contained() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    for (fault, kind) in [("trap", "trap"), ("loop", "deadline"), ("bomb", "memory")] {
        let response = probe(&p, "/closed/x", fault).await;
        assert_eq!(response.status(), 503, "{fault}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "plugin_failed", "{fault}");
        let faults = format!(
            r#"edge_plugin_faults_total{{callback="proxy_on_request_headers",kind="{kind}",plugin="probe"}}"#
        );
        assert_eq!(p.metric(&faults).await, 1.0, "{fault}");
        // The next request on the same route gets a rebuilt VM and succeeds.
        let healthy = p.get("/closed/after").await;
        assert_eq!(healthy.status(), 200, "after {fault}");
        assert_eq!(healthy.headers()["x-greeting"], "hello");
    }
    let restarts = r#"edge_plugin_vm_restarts_total{plugin="probe"}"#;
    assert_eq!(p.metric(restarts).await, 3.0);
    // failure_mode open: the faulting plugin is skipped and the request goes through.
    let skipped = probe(&p, "/open/x", "trap").await;
    assert_eq!(skipped.status(), 200);
    let open = r#"edge_plugin_failure_outcomes_total{mode="open",plugin="probe-open"}"#;
    assert_eq!(p.metric(open).await, 1.0);
    let closed = r#"edge_plugin_failure_outcomes_total{mode="closed",plugin="probe"}"#;
    assert_eq!(p.metric(closed).await, 3.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_cas_increments_are_exact_across_vms_and_workers() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 2);
    const N: usize = 200;
    let requests = (0..N).map(|_| probe(&p, "/closed/count", "count"));
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = p.get("/closed/read").await;
    assert_eq!(after.headers()["x-count"], N.to_string().as_str());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_pause_and_resume_or_deny() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    let allowed = p
        .http
        .get(p.url("/closed/resource"))
        .header("x-probe", "callout")
        .header("x-authz-path", "/allow")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let body: serde_json::Value = allowed.json().await.unwrap();
    let authz_said: serde_json::Value =
        serde_json::from_str(body["headers"]["x-authz-body"].as_str().unwrap()).unwrap();
    assert_eq!(
        authz_said["path"], "/allow",
        "the callout reached the authz upstream"
    );
    let denied = p
        .http
        .get(p.url("/closed/resource"))
        .header("x-probe", "callout")
        .header("x-authz-path", "/deny?status=403")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["x-authz-status"], "403");
    let refused = probe(&p, "/closed/resource", "callout-unknown").await;
    assert_eq!(refused.status(), 502);
    assert_eq!(refused.headers()["x-callout-error"], "BadArgument");
    // allowed: callout + proxied request; denied: callout only; refused: nothing.
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_rewritten_at_end_of_stream_with_honest_framing() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    // A body no plugin touches passes as is (re-framed as chunked upstream).
    let untouched = p
        .http
        .post(p.url("/closed/upload"))
        .body("plain body")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = untouched.json().await.unwrap();
    assert_eq!(body["body"], "plain body");
    // Request body: buffered by the plugin, rewritten, sent upstream re-framed.
    let sent = "x".repeat(50_000);
    let response = p
        .http
        .post(p.url("/closed/upload"))
        .header("x-probe", "rewrite-request")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let upstream_saw = body["body"].as_str().unwrap();
    assert_eq!(upstream_saw.len(), sent.len() + 12, "{:.80}", upstream_saw);
    assert!(upstream_saw == format!("{} [rewritten]", sent.to_uppercase()));
    // Response body: the plugin removes Content-Length (Envoy's idiom) or holds the headers;
    // either way what arrives is the rewritten body, framed by its real length.
    for probe in ["rewrite-response", "hold-response"] {
        let response = probe_request(&p, "/closed/page?h-x-note=some%20text", probe).await;
        assert_eq!(response.status(), 200, "{probe}");
        let announced = response.content_length();
        let text = response.text().await.unwrap();
        assert!(text.ends_with("} [rewritten]"), "{probe}: {text:.200}");
        assert!(text.contains("\"METHOD\":\"GET\""), "{probe}: {text:.200}");
        if let Some(length) = announced {
            assert_eq!(
                length as usize,
                text.len(),
                "{probe}: a stale Content-Length"
            );
        }
    }
    // Without a body probe, bodies pass untouched and keep their Content-Length.
    let plain = p.get("/closed/page").await;
    assert!(plain.content_length().is_some());
    assert!(plain.text().await.unwrap().contains("\"method\":\"GET\""));
    p.stop().await;
}

/// What the `stream-body` probe last recorded for `direction` (request or response), read from
/// the next response: (bytes, calls, calls that said end of stream).
async fn streamed(p: &Proxy, direction: &str) -> (usize, u32, u32) {
    let response = p.get("/closed/read").await;
    let tally = response.headers()[format!("x-streamed-{direction}").as_str()]
        .to_str()
        .unwrap()
        .to_string();
    let numbers: Vec<u64> = tally
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    (numbers[0] as usize, numbers[1] as u32, numbers[2] as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_end_exactly_once_whatever_their_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    // A plugin that watches bodies go by without pausing sees every byte, and the end of
    // stream exactly once: on the chunk that completes a Content-Length, or on the empty last
    // read of a chunked body.
    for (path, chunked) in [("/closed/s", false), ("/closed/s?chunked=1", true)] {
        let response = probe(&p, path, "stream-body").await;
        assert_eq!(response.content_length().is_none(), chunked, "{path}");
        let text = response.text().await.unwrap();
        let (bytes, calls, ends) = streamed(&p, "response").await;
        assert_eq!((bytes, ends), (text.len(), 1), "{path}: {calls} calls");
        if !chunked {
            assert_eq!(calls, 1, "{path}: one chunk, which is the end");
        }
    }
    let sized = p
        .http
        .post(p.url("/closed/upload"))
        .header("x-probe", "stream-body")
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(sized.status(), 200);
    assert_eq!(streamed(&p, "request").await, (11, 1, 1));
    let address = p.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tcp.write_all(
        b"POST /closed/upload HTTP/1.1\r\nHost: localhost\r\nx-probe: stream-body\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
    assert!(
        reply.contains("hello world"),
        "the upstream got the body: {reply:.400}"
    );
    let (bytes, _, ends) = streamed(&p, "request").await;
    assert_eq!((bytes, ends), (11, 1));
    p.stop().await;
}

async fn probe_request(p: &Proxy, path: &str, probe_name: &str) -> reqwest::Response {
    probe(p, path, probe_name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_run_and_call_out_from_the_root_context() {
    let echo = start_counting_echo().await;
    let p = start_with(echo.addr, 1, true);
    let mut seen = (0, String::new());
    for _ in 0..300 {
        let response = p.get("/ticks/x").await;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        seen = (
            header("x-ticks").parse().unwrap_or(0),
            header("x-tick-callout"),
        );
        if seen.0 >= 3 && seen.1 == "200" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen.0 >= 3, "ticks counted: {seen:?}");
    assert_eq!(seen.1, "200", "a tick's callout answered");
    let ticks = r#"edge_plugin_calls_total{callback="proxy_on_tick",plugin="ticker"}"#;
    assert!(p.eventually_metric(ticks, 3.0).await >= 3.0);
    p.stop().await;
}

#[test]
fn bad_modules_and_rejected_configs_are_named() {
    use edge_proxy::plugin::{FailureMode, HostSettings, PluginHost, PluginSpec};
    let dir = tempfile::tempdir().unwrap();
    let spec = |name: &str, module: std::path::PathBuf, config: &str| PluginSpec {
        name: name.into(),
        module,
        config: config.as_bytes().to_vec(),
        vm_config: Vec::new(),
        failure_mode: FailureMode::Closed,
        vms: 1,
        memory_bytes: 32 << 20,
        max_body_bytes: 8 << 20,
        cpu_deadline: std::time::Duration::from_millis(100),
        allowed_upstreams: Vec::new(),
        root_id: name.into(),
    };
    let settings = HostSettings {
        module_cache_dir: Some(dir.path().join("cache")),
        shared_data_max_bytes: 1 << 20,
        shared_data_ttl_by_prefix: Vec::new(),
    };
    let metrics = || std::sync::Arc::new(edge_proxy::metrics::Metrics::new());
    let good = spec("probe", plugin_wasm("conformance"), r#"{"greeting":"hi"}"#);
    PluginHost::start(std::slice::from_ref(&good), &settings, metrics()).unwrap();
    // Second start loads the compiled module from the cache folder.
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
        1
    );
    PluginHost::start(&[good], &settings, metrics()).unwrap();
    let rejected = spec("picky", plugin_wasm("conformance"), r#"{"reject":true}"#);
    let e = PluginHost::start(&[rejected], &settings, metrics()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin `picky`: proxy_on_configure rejected the configuration (returned false)"
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let e = PluginHost::start(&[spec("junk", junk, "")], &settings, metrics()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("plugin `junk`: not a valid wasm module"),
        "{e}"
    );
    // A module importing a function the host lacks is named precisely.
    let alien = dir.path().join("alien.wasm");
    std::fs::write(&alien, wat_module()).unwrap();
    let e = PluginHost::start(&[spec("alien", alien, "")], &settings, metrics()).unwrap_err();
    assert_eq!(e.to_string(), "plugin `alien`: the module imports `env::proxy_teleport`, which this host does not provide");
}

/// A minimal module exporting the ABI marker and importing `env.proxy_teleport`.
fn wat_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module (import "env" "proxy_teleport" (func)) (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .unwrap()
}

/// Regression: a plugin that held the response body and then failed gave the client a generic
/// error, or a `200` head whose chunked body is never terminated. Now: before the head goes out,
/// the failure mode's 503 naming the plugin; after it, the connection is closed with the body
/// unterminated, which every client reads as an error, never as a complete response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_while_holding_a_body_answers_503_or_aborts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    for framing in ["chunked=1", "plain=1", "big=900000"] {
        let mut tcp = tokio::net::TcpStream::connect(p.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!(
            "GET /closed/held?{framing} HTTP/1.1\r\nHost: localhost\r\nx-probe: hold-then-trap\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut raw))
                .await;
        let text = String::from_utf8_lossy(&raw).to_string();
        assert!(
            read.is_ok(),
            "{framing}: the connection stayed open: {text}"
        );
        if text.starts_with("HTTP/1.1 503") {
            assert!(
                text.contains("\"code\":\"plugin_failed\""),
                "{framing}: {text}"
            );
            assert!(text.contains("plugin `probe` failed"), "{framing}: {text}");
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 200"), "{framing}: {text:.300}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{framing}: a failed body must not be terminated as complete: {text:.300}"
        );
        // What a client library makes of it: an error, not a body.
        let url = p.url(&format!("/closed/held?{framing}"));
        let response = p
            .http
            .get(url)
            .header("x-probe", "hold-then-trap")
            .send()
            .await;
        if let Ok(response) = response {
            assert!(
                response.bytes().await.is_err(),
                "{framing}: read as complete"
            );
        }
    }
    p.stop().await;
}

/// A plugin buffering a body past its `limits.max_body_bytes` (1 MiB here): 413 for a request
/// body, 502 (or an aborted response, if the head went out) for a response body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_beyond_the_plugin_limit_are_refused() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr, 1);
    let hits = echo.hits.load(std::sync::atomic::Ordering::SeqCst);
    let response = p
        .http
        .post(p.url("/closed/upload"))
        .header("x-probe", "rewrite-request")
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
    // Under the limit, the same plugin still buffers and rewrites.
    let ok = p
        .http
        .post(p.url("/closed/upload"))
        .header("x-probe", "rewrite-request")
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let response = p
        .http
        .get(p.url("/closed/big?big=3000000"))
        .header("x-probe", "hold-response")
        .send()
        .await;
    match response {
        Ok(r) if r.status() == 502 => {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "response_too_large");
        }
        Ok(r) => {
            assert_eq!(r.status(), 200);
            assert!(
                r.bytes().await.is_err(),
                "a held response past the limit read as complete"
            );
        }
        Err(_) => {}
    }
    assert!(echo.hits.load(std::sync::atomic::Ordering::SeqCst) >= hits + 2);
    p.stop().await;
}
