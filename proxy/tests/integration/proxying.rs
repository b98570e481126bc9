//! Proxying the catalog: identical bytes, 404 without a route, 502 when the origin is down,
//! the admin endpoints.

use std::time::{Duration, Instant};

use crate::common::{catalog_upstream, free_port, proxy_yaml, Origin, Proxy};

const CATALOG_ROUTE: &str = "  - { name: catalog, path_prefix: /api/, upstream: catalog }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_listing_is_identical_to_direct() {
    let o = Origin::start(2_000, "").await;
    let addr = o.origin.local_addr();
    let p = Proxy::start(|dir| proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE));
    for path in [
        "/api/v1/products?category=polo&limit=5",
        "/api/v1/products?category=linen&limit=50",
        // Over 16 KiB (asserted below): more than the connection's write buffer.
        "/api/v1/products?category=linen&limit=200",
        "/api/v1/products/42",
        "/api/v1/categories",
    ] {
        let direct = o.https.get(o.url(path)).send().await.unwrap();
        let proxied = p.get(path).await;
        assert_eq!(proxied.status(), direct.status(), "{path}");
        for header in ["etag", "cache-control", "vary", "content-type"] {
            assert_eq!(
                proxied.headers()[header],
                direct.headers()[header],
                "{path} {header}"
            );
        }
        assert!(proxied.headers().contains_key("x-request-id"));
        let body = proxied.bytes().await.unwrap();
        assert_eq!(body, direct.bytes().await.unwrap(), "{path}");
        if path.ends_with("limit=200") {
            assert!(body.len() > 16 * 1024, "{} bytes", body.len());
        }
    }
    // Conditional requests pass through too.
    let etag = p.get("/api/v1/products/42").await.headers()["etag"].clone();
    let revalidated = p
        .http
        .get(p.url("/api/v1/products/42"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 304);
    let ok = r#"edge_requests_total{route="catalog",status="200"}"#;
    assert_eq!(p.eventually_metric(ok, 6.0).await, 6.0);
    let not_modified = r#"edge_requests_total{route="catalog",status="304"}"#;
    assert_eq!(p.eventually_metric(not_modified, 1.0).await, 1.0);
    let timed = r#"edge_request_duration_seconds_count{route="catalog"}"#;
    assert_eq!(p.eventually_metric(timed, 7.0).await, 7.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_paths_get_a_json_404_from_the_proxy() {
    let o = Origin::start(200, "").await;
    let addr = o.origin.local_addr();
    let p = Proxy::start(|dir| proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE));
    let response = p.get("/nothing/here").await;
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_route");
    let unrouted = r#"edge_requests_total{route="none",status="404"}"#;
    assert_eq!(p.eventually_metric(unrouted, 1.0).await, 1.0);
    assert_eq!(
        o.metric(r#"origin_http_requests_total{route="unknown",status="404"}"#)
            .await,
        0.0
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_gives_502_with_a_clear_body_within_the_connect_timeout() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A live origin only for its CA; the upstream points at a port nobody listens on.
    let o = Origin::start(50, "").await;
    let ca = o.ca.clone();
    let p = Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &catalog_upstream(
                dead,
                &ca,
                "    connect_timeout: 1s\n    total_connect_timeout: 2s\n",
            ),
            CATALOG_ROUTE,
        )
    });
    let started = Instant::now();
    let response = p.get("/api/v1/products?category=polo").await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "connect_refused");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("upstream `catalog`"), "{message}");
    assert!(waited < Duration::from_secs(2), "took {waited:?}");
    let refused = r#"edge_upstream_errors_total{kind="connect_refused",upstream="catalog"}"#;
    assert_eq!(p.eventually_metric(refused, 1.0).await, 1.0);
    // The proxy itself is fine.
    let health = p
        .http
        .get(format!("{}/healthz", p.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let o = Origin::start(50, "").await;
    let addr = o.origin.local_addr();
    let p = Proxy::start(|dir| proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE));
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/nope", 404),
    ] {
        let r = p
            .http
            .get(format!("{}{path}", p.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    assert!(p.metrics_text().await.contains("edge_requests_in_flight"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_the_in_flight_request_finish() {
    let o = Origin::start(
        200,
        "http: { request_deadline: 20s }\n\
         database: { pool: { max_connections: 1, min_idle: 0, acquire_timeout: 20s } }",
    )
    .await;
    let addr = o.origin.local_addr();
    let p = Proxy::start(|dir| {
        proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE)
            .replace("grace_period: 0s", "grace_period: 3s")
    });
    let listen = p.proxy.as_ref().unwrap().listen;
    // Park a request at the origin: it waits for the only database connection, which we hold.
    let held = o.origin.database().pool().acquire().await.unwrap();
    let request = tokio::spawn({
        let (client, url) = (
            p.http.clone(),
            p.url("/api/v1/products?category=polo&limit=2"),
        );
        async move { client.get(url).send().await.unwrap().status() }
    });
    while o.metric("origin_db_pool_waits_total").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(p.stop());
    // The listener closes at once: new connections are refused...
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the proxy kept accepting after the stop signal");
    // ...while the request in flight is still being served, and completes.
    assert!(!request.is_finished());
    drop(held);
    assert_eq!(request.await.unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// `access_log: FILE`: one logfmt line per request, written by the writer thread within a
/// fraction of a second, and the last ones flushed when the proxy stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_file_gets_one_line_per_request() {
    let o = Origin::start(2_000, "").await;
    let addr = o.origin.local_addr();
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("access.log");
    let p = Proxy::start(|dir| {
        proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE).replace(
            "access_log: off",
            &format!("access_log: {}", file.display()),
        )
    });
    let detail = p.get("/api/v1/products/42").await;
    assert_eq!(detail.status(), 200);
    let request_id = detail.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = detail.bytes().await.unwrap();
    let started = Instant::now();
    let first = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.is_empty() || started.elapsed() > Duration::from_secs(3) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.lines().count(), 1, "{first}");
    for field in [
        format!("request_id={request_id} "),
        "client=127.0.0.1 method=GET target=\"/api/v1/products/42\" status=200 ".to_string(),
        format!("bytes={} route=catalog upstream=catalog ", body.len()),
        " error=- protocol=HTTP/1.1 tls=- client_cert=-\n".to_string(),
    ] {
        assert!(first.contains(&field), "{field:?} not in {first}");
    }
    assert!(first.starts_with("ts=20"), "{first}");
    assert_eq!(p.get("/nowhere?x=\"1\"").await.status(), 404);
    p.stop().await;
    let all = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert!(
        lines[1].contains("target=\"/nowhere?x=%221%22\" status=404 ")
            || lines[1].contains("target=\"/nowhere?x=\\\"1\\\"\" status=404 "),
        "{all}"
    );
}
