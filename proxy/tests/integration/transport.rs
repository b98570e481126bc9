//! Upstream connection reuse under load, and TLS session resumption when connections churn.

use std::sync::Arc;

use futures::StreamExt;

use crate::common::{catalog_upstream, proxy_yaml, Origin, Proxy};

const CATALOG_ROUTE: &str = "  - { name: catalog, path_prefix: /api/, upstream: catalog }";

async fn load(p: &Arc<Proxy>, requests: usize, concurrency: usize, path: &str) {
    let results: Vec<u16> = futures::stream::iter(0..requests)
        .map(|_| {
            let p = p.clone();
            let path = path.to_string();
            async move {
                let r = p.get(&path).await;
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                status
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(results.iter().all(|s| *s == 200), "non-200 under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_reuses_upstream_connections() {
    let o = Origin::start(2_000, "").await;
    let addr = o.origin.local_addr();
    let p = Arc::new(Proxy::start(|dir| {
        proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE)
    }));
    let path = "/api/v1/products?category=polo&limit=10";
    let new = r#"edge_upstream_connections_total{reused="false",upstream="catalog"}"#;
    let reused = r#"edge_upstream_connections_total{reused="true",upstream="catalog"}"#;

    // Warm-up: concurrency 16 needs about 16 upstream connections once. A few more are fair:
    // Pingora returns a connection to the pool after the response has gone to the client, so a
    // client that sends its next request at once can find the pool one short and open another
    // (what stops that from recurring is the pool's spares: the steady state below).
    load(&p, 200, 16, path).await;
    let (new_before, origin_before) = (
        p.metric(new).await,
        o.metric("origin_http_connections_total").await,
    );
    assert!(new_before <= 24.0, "warm-up opened {new_before}");

    load(&p, 2_000, 16, path).await;
    let new_during = p.metric(new).await - new_before;
    let origin_during = o.metric("origin_http_connections_total").await - origin_before;
    // At most 2 new upstream connections per 1,000 requests, seen by the proxy and the origin.
    assert!(
        new_during <= 4.0,
        "{new_during} new upstream connections for 2000 requests"
    );
    assert!(
        origin_during <= 5.0,
        "origin accepted {origin_during} (one is our /metrics reader)"
    );
    let reused_total = p.metric(reused).await;
    assert!(
        reused_total >= 2_200.0 - 20.0,
        "only {reused_total} reused of 2200 (new {new_before}+{new_during})"
    );
    Arc::try_unwrap(p).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstream_tls_connections_resume_their_session() {
    // The origin closes every connection after 10 requests: the proxy must reconnect often.
    let o = Origin::start(500, "http: { max_requests_per_connection: 10 }").await;
    let addr = o.origin.local_addr();
    let p = Arc::new(Proxy::start(|dir| {
        proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), CATALOG_ROUTE)
    }));
    load(&p, 300, 1, "/api/v1/products/5").await;

    let full = o
        .metric(r#"origin_tls_handshakes_total{kind="full"}"#)
        .await;
    let resumed = o
        .metric(r#"origin_tls_handshakes_total{kind="resumed"}"#)
        .await;
    // Our /metrics reader is another client: one full handshake, then its connection is reused.
    let proxy_full = full - 1.0;
    let after_first = proxy_full + resumed - 1.0;
    assert!(
        after_first >= 29.0,
        "connections did not churn: full {full}, resumed {resumed}"
    );
    let ratio = resumed / after_first;
    assert!(
        ratio >= 0.9,
        "only {resumed} of {after_first} new TLS connections resumed"
    );
    Arc::try_unwrap(p).ok().unwrap().stop().await;
}
