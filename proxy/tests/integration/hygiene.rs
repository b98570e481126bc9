//! What crosses the proxy: X-Forwarded-*, traceparent, request id, hop-by-hop removal.

use crate::common::{proxy_yaml, start_echo, Proxy};

async fn echo_proxy() -> Proxy {
    let echo = start_echo().await;
    Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &format!("  echo:\n    addresses: [{echo}]\n"),
            "  - { name: echo, path_prefix: /echo/, upstream: echo }",
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_trace_context_and_hop_by_hop() {
    let p = echo_proxy().await;
    let response = p
        .http
        .get(p.url("/echo/x?y=1"))
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "must not pass")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("upgrade", "websocket")
        .header("x-forwarded-for", "203.0.113.7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // Hop-by-hop headers of the upstream's response never reach the client.
    assert!(response.headers().get("x-upstream-hop").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    let seen: serde_json::Value = response.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/echo/x?y=1");
    for gone in [
        "x-client-hop",
        "proxy-authorization",
        "upgrade",
        "keep-alive",
    ] {
        assert!(h.get(gone).is_none(), "{gone} crossed the proxy: {h}");
    }
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h["x-forwarded-host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(h["x-request-id"], request_id.as_str());
    let tp: Vec<&str> = h["traceparent"].as_str().unwrap().split('-').collect();
    assert_eq!(
        tp[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id propagated"
    );
    assert_ne!(tp[2], "00f067aa0ba902b7", "new parent id for our hop");
    assert_eq!(tp[3], "01");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_and_request_id_are_created_when_missing() {
    let p = echo_proxy().await;
    let a: serde_json::Value = p.get("/echo/a").await.json().await.unwrap();
    let b: serde_json::Value = p.get("/echo/b").await.json().await.unwrap();
    let trace = |v: &serde_json::Value| v["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(trace(&a).len(), 55);
    assert_ne!(trace(&a).split('-').nth(1), trace(&b).split('-').nth(1));
    assert_eq!(a["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_ne!(a["headers"]["x-request-id"], b["headers"]["x-request-id"]);
    p.stop().await;
}
