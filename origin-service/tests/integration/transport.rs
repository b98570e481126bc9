//! TLS session resumption as counted by the origin, keep-alive reuse, connection limits, shutdown.

use std::time::Duration;

use crate::common::TestOrigin;

#[tokio::test]
async fn a_client_that_resumes_is_counted_as_resumed() {
    let t = TestOrigin::start(200, "").await;
    // No pooling: every request is a new TCP connection and a new TLS handshake.
    let client = t
        .client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client.get(t.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // The test client's own /metrics request is one more (full) handshake.
    assert_eq!(
        t.metric(r#"origin_tls_handshakes_total{kind="resumed"}"#)
            .await,
        2.0
    );
    assert_eq!(
        t.metric(r#"origin_tls_handshakes_total{kind="full"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn without_tickets_or_session_cache_nothing_resumes() {
    let t = TestOrigin::start(
        200,
        "tls: { session_tickets: false, session_cache_entries: 0 }",
    )
    .await;
    let client = t
        .client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..3 {
        client
            .get(t.url("/healthz"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(
        t.metric(r#"origin_tls_handshakes_total{kind="resumed"}"#)
            .await,
        0.0
    );
    assert_eq!(
        t.metric(r#"origin_tls_handshakes_total{kind="full"}"#)
            .await,
        4.0
    );
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let t = TestOrigin::start(200, "").await;
    for _ in 0..10 {
        t.get("/api/v1/products?category=tee&limit=3")
            .await
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(t.metric("origin_http_connections_total").await, 1.0);
}

#[tokio::test]
async fn max_requests_per_connection_closes_after_n() {
    let t = TestOrigin::start(200, "http: { max_requests_per_connection: 3 }").await;
    let mut closes = 0;
    for _ in 0..7 {
        let r = t.get("/healthz").await;
        if r.headers().get("connection").is_some_and(|v| v == "close") {
            closes += 1;
        }
        r.bytes().await.unwrap();
    }
    assert_eq!(closes, 2);
    // 7 requests at 3 per connection = 3 connections; the /metrics read is the third's 2nd request.
    assert_eq!(t.metric("origin_http_connections_total").await, 3.0);
    let resumed = t
        .metric(r#"origin_tls_handshakes_total{kind="resumed"}"#)
        .await;
    assert_eq!(
        resumed, 2.0,
        "new connections after the first resume their session"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_timeout() {
    let t = TestOrigin::start(200, "http: { keepalive_idle_timeout: 300ms }").await;
    t.get("/healthz").await.bytes().await.unwrap();
    assert_eq!(t.metric("origin_http_connections_open").await, 1.0);
    tokio::time::sleep(Duration::from_millis(900)).await;
    // The idle connection is gone; this request needs (and counts) a new one.
    assert_eq!(t.metric("origin_http_connections_total").await, 2.0);
    assert_eq!(t.metric("origin_http_connections_open").await, 1.0);
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let t = TestOrigin::start(200, "").await;
    let addr = t.origin.local_addr();
    assert_eq!(t.get("/healthz").await.status(), 200);
    let TestOrigin { origin, .. } = t;
    tokio::time::timeout(Duration::from_secs(5), origin.stop())
        .await
        .expect("stop finishes promptly, idle keep-alive connections included");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_the_in_flight_request_finish() {
    let t = TestOrigin::start(
        200,
        "http: { request_deadline: 20s, shutdown_grace: 10s }\n\
         database: { pool: { max_connections: 1, min_idle: 0, acquire_timeout: 20s } }",
    )
    .await;
    // Park the request inside the handler: it waits for the only pooled connection.
    let held = t.origin.database().pool().acquire().await.unwrap();
    let request = tokio::spawn({
        let client = t.client.clone();
        let url = t.url("/api/v1/products?category=polo&limit=3");
        async move {
            client
                .get(url)
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        }
    });
    let parked = async {
        while t.metric("origin_db_pool_waits_total").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), parked)
        .await
        .unwrap();

    t.origin.shutdown_handle().trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!request.is_finished(), "the in-flight request was cut off");
    assert!(
        tokio::net::TcpStream::connect(t.origin.local_addr())
            .await
            .is_err(),
        "the listener still accepts after shutdown"
    );

    drop(held);
    let body = request.await.unwrap().unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    let TestOrigin { origin, .. } = t;
    tokio::time::timeout(Duration::from_secs(5), origin.wait())
        .await
        .unwrap();
}
