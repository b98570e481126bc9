//! How a chain of unmodified SDK plugins behaves where Envoy sets the rules: response callbacks
//! in the reverse of the route's order, local responses (from any callback) going back through
//! the plugins before the one that answered, callouts from callbacks that cannot wait, faults
//! that stay with the request that caused them, and what a failure tells the client.

use std::net::SocketAddr;

use crate::common::{plugin_wasm, proxy_yaml, start_counting_echo, Proxy};

/// `/pair/` runs `first` then `second` (both the conformance plugin, greeting with their
/// names); `/closed/` runs `probe` alone on one VM, with `root_id: custom-root`.
fn start(echo: SocketAddr) -> Proxy {
    start_with(echo, 0)
}

/// As [`start`], the `ticker` plugin (on `/ticks/`) ticking every `tick_ms` (0: never): each
/// tick calls the echo upstream, and each answer calls it again after 3 s (`/followup`).
fn start_with(echo: SocketAddr, tick_ms: u64) -> Proxy {
    let wasm = plugin_wasm("conformance");
    let upstreams =
        format!("  echo: {{ addresses: [{echo}] }}\n  authz: {{ addresses: [{echo}] }}");
    let routes = "  - { name: pair, path_prefix: /pair/, upstream: echo, plugins: [first, second] }\n\
                  \x20 - { name: closed, path_prefix: /closed/, upstream: echo, plugins: [probe] }\n\
                  \x20 - { name: ticks, path_prefix: /ticks/, upstream: echo, plugins: [ticker] }";
    Proxy::start(|dir| {
        proxy_yaml(dir, &upstreams, routes)
            + &format!(
                "plugins:\n\
                 \x20 - {{ name: first, module: {wasm}, config: {{ greeting: first }} }}\n\
                 \x20 - {{ name: second, module: {wasm}, config: {{ greeting: second }} }}\n\
                 \x20 - {{ name: probe, module: {wasm}, config: {{ greeting: hello }}, vms: 1, root_id: custom-root, allowed_upstreams: [authz] }}\n\
                 \x20 - {{ name: ticker, module: {wasm}, config: {{ tick_ms: {tick_ms}, tick_callout: true, tick_followup: true, followup_path: \"/followup?delay_ms=3000\" }}, vms: 1, allowed_upstreams: [authz] }}\n",
                wasm = wasm.display(),
            )
    })
}

/// A request to `path` with the probe `probe` aimed at the plugin greeting `target`.
async fn aimed(p: &Proxy, path: &str, probe: &str, target: &str) -> reqwest::Response {
    p.http
        .get(p.url(path))
        .header("x-probe", probe)
        .header("x-probe-target", target)
        .send()
        .await
        .unwrap()
}

fn values(response: &reqwest::Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Regression: response callbacks ran in the route's order, so of two plugins setting the same
/// response header the second won; under Envoy the first does (encoder filters run in reverse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_callbacks_run_in_the_reverse_of_the_route_order() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let response = p.get("/pair/items").await;
    assert_eq!(response.status(), 200);
    assert_eq!(values(&response, "x-greeting"), ["first"]);
    assert_eq!(values(&response, "x-plugin-response"), ["yes", "yes"]);
    p.stop().await;
}

/// Regression: a plugin's local response skipped every response callback; under Envoy the
/// plugins before the one that answered see it (and the ones after it never saw the request).
/// The same holds for the 503 of a `closed` plugin that failed, which tells the client nothing
/// of the plugin's insides (it used to carry the wasm backtrace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_goes_back_through_the_plugins_before_the_one_that_answered() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let denied = aimed(&p, "/pair/x", "deny", "second").await;
    assert_eq!(denied.status(), 403);
    assert_eq!(values(&denied, "x-greeting"), ["first"]);
    assert_eq!(values(&denied, "x-plugin-response"), ["yes"]);
    assert_eq!(values(&denied, "x-denied-by"), ["conformance"]);
    assert_eq!(denied.text().await.unwrap(), "denied by plugin");
    // The first plugin answering: nobody is before it.
    let by_first = aimed(&p, "/pair/x", "deny", "first").await;
    assert_eq!(by_first.status(), 403);
    assert!(values(&by_first, "x-greeting").is_empty());

    let failed = aimed(&p, "/pair/x", "trap", "second").await;
    assert_eq!(failed.status(), 503);
    assert_eq!(values(&failed, "x-greeting"), ["first"]);
    assert_eq!(values(&failed, "cache-control"), ["no-store"]);
    let text = failed.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["status"], 503);
    assert_eq!(body["error"]["code"], "plugin_failed");
    assert_eq!(body["error"]["message"], "plugin `second` failed");
    for inside in ["wasm", "backtrace", "panicked", "conformance", "trap"] {
        assert!(!text.contains(inside), "{inside} in {text}");
    }
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    p.stop().await;
}

/// Regression: a local response from a request body callback was only picked up by the next
/// header callback (the response's, of whichever plugin came first, so the plugins before the
/// responder never saw it); from a response body callback it was dropped, and the response
/// went out whole (then the next request on that VM got the stale local response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_from_a_body_callback_is_honoured() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let denied = p
        .http
        .post(p.url("/pair/upload"))
        .header("x-probe", "deny-in-request-body")
        .header("x-probe-target", "second")
        .body("some body")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(values(&denied, "x-denied-in"), ["request-body"]);
    assert_eq!(values(&denied, "x-greeting"), ["first"]);
    assert_eq!(denied.text().await.unwrap(), "denied in body");

    // From a response body callback: the local response replaces the upstream's answer if
    // its head has not gone out yet (a small answer read at once); otherwise the response is
    // cut off, so the client cannot mistake it for the upstream's whole answer.
    for path in ["/closed/doc", "/closed/doc?big=900000"] {
        let answer = aimed(&p, path, "deny-in-response-body", "hello").await;
        if answer.status() == 403 {
            assert_eq!(
                answer.text().await.unwrap(),
                "denied in response body",
                "{path}"
            );
        } else {
            assert_eq!(answer.status(), 200, "{path}");
            assert!(answer.bytes().await.is_err(), "{path}: must not complete");
        }
    }
    for _ in 0..4 {
        let next = p.get("/closed/next").await;
        assert_eq!(next.status(), 200, "nothing is left for the next request");
    }
    p.stop().await;
}

/// Regression: a callout dispatched from `on_log` stayed in the VM and was run by the next
/// request's header callback, its answer delivered to the wrong context (the SDK then panics).
/// It is now run for the context that dispatched it, after the response, and the context is
/// deleted once it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_from_on_log_are_run_for_their_own_context() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let first = aimed(&p, "/closed/a", "callout-in-log", "hello").await;
    assert_eq!(first.status(), 200);
    let mut seen = None;
    for _ in 0..100 {
        let next = p.get("/closed/b").await;
        assert_eq!(
            next.status(),
            200,
            "a later request is not hit by the callout"
        );
        if let Some(status) = next.headers().get("x-log-callout") {
            seen = Some(status.to_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen.as_deref(), Some("200"), "the log callout was answered");
    let answered =
        r#"edge_plugin_calls_total{callback="proxy_on_http_call_response",plugin="probe"}"#;
    assert_eq!(p.eventually_metric(answered, 1.0).await, 1.0);
    p.stop().await;
}

/// Regression: a callout dispatched from a tick's callout answer stayed in the VM until the
/// next tick, or a request's callback, took it: a request arriving in between ran it and
/// waited for its answer. It now runs at once, for the root context, and no request waits for
/// it: right after a tick's answer a request completes while the follow-up (answered after
/// 3 s) is still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_from_a_ticks_callout_answer_run_for_the_root_context() {
    let echo = start_counting_echo().await;
    let p = start_with(echo.addr, 2000);
    let answered =
        r#"edge_plugin_calls_total{callback="proxy_on_http_call_response",plugin="ticker"}"#;
    assert!(
        p.eventually_metric(answered, 1.0).await >= 1.0,
        "the first tick's answer"
    );
    let response = p.get("/ticks/x").await;
    assert_eq!(response.status(), 200);
    let followups = r#"edge_plugin_conformance_tick_followups_total{plugin="ticker"}"#;
    assert_eq!(
        p.metric(followups).await,
        0.0,
        "the request did not wait for the follow-up"
    );
    assert!(
        p.eventually_metric(followups, 1.0).await >= 1.0,
        "the follow-up is answered"
    );
    p.stop().await;
}

/// Regression: when one request's fault rebuilt a VM, the other requests in flight on it got
/// 503 ("its VM was rebuilt while the request was in flight"). Now each gets a new context on
/// the new VM (its request headers callback re-run there) and completes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_fails_only_the_request_that_caused_it() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    let slow: Vec<_> = (0..20)
        .map(|i| {
            let http = p.http.clone();
            let url = p.url(&format!("/closed/slow?delay_ms=600&i={i}"));
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for _ in 0..5 {
        let faulted = aimed(&p, "/closed/x", "trap", "hello").await;
        assert_eq!(faulted.status(), 503);
    }
    for request in slow {
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(values(&response, "x-greeting"), ["hello"]);
    }
    let revived = r#"edge_plugin_context_revivals_total{plugin="probe"}"#;
    assert!(p.metric(revived).await >= 1.0);
    p.stop().await;
}

/// A plugin reads its `root_id` (default: its name) as the `plugin_root_id` property.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_read_their_root_id() {
    let echo = start_counting_echo().await;
    let p = start(echo.addr);
    assert_eq!(
        values(&p.get("/closed/r").await, "x-root-id"),
        ["custom-root"]
    );
    assert_eq!(values(&p.get("/pair/r").await, "x-root-id"), ["first"]);
    p.stop().await;
}
