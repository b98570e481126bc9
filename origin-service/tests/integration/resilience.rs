//! Bad input never panics; an exhausted pool or a closed database gives 503 within the deadline.

use std::time::{Duration, Instant};

use crate::common::TestOrigin;

#[tokio::test]
async fn bad_input_gets_400_with_a_json_error() {
    let t = TestOrigin::start(500, "").await;
    for path in [
        "/api/v1/products",
        "/api/v1/products?category=",
        "/api/v1/products?category=polo&limit=0",
        "/api/v1/products?category=polo&limit=201",
        "/api/v1/products?category=polo&limit=-5",
        "/api/v1/products?category=polo&limit=lots",
        "/api/v1/products?category=polo&limit=99999999999999999999999",
        "/api/v1/products?category=polo&cursor=not-a-cursor",
        "/api/v1/products?category=polo&cursor=djE6LTE",
        "/api/v1/products?category=polo&cursor=%FF%FE",
        "/api/v1/products?category=polo&category=oxford",
        "/api/v1/products/abc",
        "/api/v1/products/0",
        "/api/v1/products/-1",
        "/api/v1/products/1.5",
        "/api/v1/products/99999999999999999999999",
        "/api/v1/products/",
    ] {
        let response = t.get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{path}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let post = t
        .client
        .post(t.url("/api/v1/products?category=polo"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert_eq!(t.get("/api/v2/anything").await.status(), 404);
    // The server is still healthy after all of that.
    assert_eq!(t.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn malformed_http_is_rejected_without_harming_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestOrigin::start(200, "").await;
    let ca = std::fs::read(t.origin.ca_file().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(origin_service::server::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(t.origin.local_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GARBAGE /\x00\x01 NOT-HTTP\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(t.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn exhausted_pool_gives_503_within_the_deadline() {
    let t = TestOrigin::start(
        500,
        "http: { request_deadline: 300ms }\n\
         database: { pool: { max_connections: 2, min_idle: 0, acquire_timeout: 30s } }",
    )
    .await;
    let pool = t.origin.database().pool();
    let held = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];

    for path in [
        "/api/v1/products?category=polo",
        "/api/v1/products/5",
        "/api/v1/categories",
    ] {
        let started = Instant::now();
        let response = t.get(path).await;
        let waited = started.elapsed();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "deadline_exceeded", "{path}");
        // It waited for the deadline, and not (much) longer: no hang.
        assert!(waited >= Duration::from_millis(300), "{path}: {waited:?}");
        assert!(waited < Duration::from_secs(5), "{path}: {waited:?}");
    }
    assert_eq!(
        t.metric(r#"origin_deadline_exceeded_total{route="products"}"#)
            .await,
        1.0
    );
    assert_eq!(t.metric("origin_db_pool_connections_in_use").await, 2.0);

    drop(held);
    assert_eq!(t.get("/api/v1/products?category=polo").await.status(), 200);
}

#[tokio::test]
async fn pool_acquire_timeout_gives_503_database_unavailable() {
    let t = TestOrigin::start(
        500,
        "http: { request_deadline: 10s }\n\
         database: { pool: { max_connections: 1, min_idle: 0, acquire_timeout: 200ms } }",
    )
    .await;
    let held = t.origin.database().pool().acquire().await.unwrap();
    let started = Instant::now();
    let (status, body) = t.get_json("/api/v1/products?category=polo").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "database_unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(t.metric("origin_db_pool_timeouts_total").await, 1.0);
    drop(held);
    assert_eq!(t.get("/api/v1/products?category=polo").await.status(), 200);
}

#[tokio::test]
async fn closed_database_gives_503_and_the_server_keeps_answering() {
    let t = TestOrigin::start(500, "").await;
    t.origin.database().close().await;
    for path in [
        "/api/v1/products?category=polo",
        "/api/v1/products/9",
        "/api/v1/categories",
    ] {
        let (status, body) = t.get_json(path).await;
        assert_eq!(status, 503, "{path}");
        assert_eq!(body["error"]["code"], "database_unavailable", "{path}");
    }
    assert_eq!(t.get("/healthz").await.status(), 200);
}
