//! The edge cache through the real proxy: hits, coalescing, what is never shared, stale while
//! revalidate, stale if error, ETag revalidation, Vary, purges.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::{catalog_upstream, proxy_yaml, start_counting_echo, Origin, Proxy};

const TOKEN: &str = "test-purge-token-0123456789";

fn catalog_route(swr: &str, sie: &str) -> String {
    format!(
        "  - {{ name: catalog, path_prefix: /api/, upstream: catalog, cache: {{ key_query_params: [category, cursor, limit], tag_query_param: category, stale_while_revalidate: {swr}, stale_if_error: {sie} }} }}"
    )
}

fn cached_proxy(o: &Origin, swr: &str, sie: &str) -> Proxy {
    let addr = o.origin.local_addr();
    let route = catalog_route(swr, sie);
    Proxy::start(|dir| {
        proxy_yaml(dir, &catalog_upstream(addr, &o.ca, ""), &route)
            + &format!("cache: {{ purge_token: {TOKEN} }}\n")
    })
}

async fn x_cache(p: &Proxy, path: &str) -> (String, bytes::Bytes) {
    let r = p.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    let result = r.headers()["x-cache"].to_str().unwrap().to_string();
    (result, r.bytes().await.unwrap())
}

async fn origin_listings(o: &Origin, status: &str) -> f64 {
    o.metric(&format!(
        r#"origin_http_requests_total{{route="products",status="{status}"}}"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_with_identical_bytes() {
    let o = Origin::start(1_000, "").await;
    let p = cached_proxy(&o, "30s", "5m");
    let path = "/api/v1/products?category=polo&limit=5";
    let (first, a) = x_cache(&p, path).await;
    let (second, b) = x_cache(&p, path).await;
    // Ignored parameters and order do not make a new entry.
    let (third, c) = x_cache(&p, "/api/v1/products?utm=x&limit=5&category=polo").await;
    assert_eq!(
        (first.as_str(), second.as_str(), third.as_str()),
        ("MISS", "HIT", "HIT")
    );
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(origin_listings(&o, "200").await, 1.0);
    let hits = r#"edge_cache_lookups_total{result="HIT",route="catalog"}"#;
    assert_eq!(p.eventually_metric(hits, 2.0).await, 2.0);
    assert_eq!(p.metric("edge_cache_entries").await, 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_requests_reach_the_origin_once() {
    let o = Origin::start(1_000, "").await;
    let p = Arc::new(cached_proxy(&o, "30s", "5m"));
    let bodies: Vec<bytes::Bytes> = futures::stream::iter(0..50)
        .map(|_| {
            let p = p.clone();
            async move {
                x_cache(&p, "/api/v1/products?category=oxford&limit=50")
                    .await
                    .1
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    assert_eq!(origin_listings(&o, "200").await, 1.0, "coalescing failed");
    Arc::try_unwrap(p).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_and_set_cookie_are_never_hits() {
    let echo = start_counting_echo().await;
    let p = Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &format!("  echo:\n    addresses: [{}]\n", echo.addr),
            "  - { name: echo, path_prefix: /echo/, upstream: echo, cache: { key_query_params: [h-cache-control, h-set-cookie, k] } }",
        )
    });
    for case in [
        "h-cache-control=no-store",
        "h-cache-control=private%2C%20max-age%3D60",
        "h-cache-control=public%2C%20s-maxage%3D60&h-set-cookie=session%3Dabc",
    ] {
        let before = echo.hits.load(Ordering::SeqCst);
        for _ in 0..3 {
            let r = p.get(&format!("/echo/x?{case}")).await;
            assert_ne!(r.headers()["x-cache"], "HIT", "{case}");
        }
        assert_eq!(echo.hits.load(Ordering::SeqCst) - before, 3, "{case}");
    }
    // A shareable response on the same route is cached (the control).
    let (a, _) = x_cache(&p, "/echo/x?h-cache-control=public%2C%20s-maxage%3D60").await;
    let (b, _) = x_cache(&p, "/echo/x?h-cache-control=public%2C%20s-maxage%3D60").await;
    assert_eq!((a.as_str(), b.as_str()), ("MISS", "HIT"));
    // Requests carrying Authorization bypass the shared cache entirely.
    let r = p
        .http
        .get(p.url("/echo/x?h-cache-control=public%2C%20s-maxage%3D60"))
        .header("authorization", "Bearer someone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_then_refreshes_once() {
    let echo = start_counting_echo().await;
    let p = Proxy::start(|dir| {
        proxy_yaml(
            dir,
            &format!("  echo:\n    addresses: [{}]\n", echo.addr),
            "  - { name: echo, path_prefix: /echo/, upstream: echo, cache: { key_query_params: [h-cache-control], stale_while_revalidate: 30s } }",
        )
    });
    let path = "/echo/swr?h-cache-control=public%2C%20s-maxage%3D1";
    assert_eq!(x_cache(&p, path).await.0, "MISS");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (stale, body) = x_cache(&p, path).await;
    assert_eq!(stale, "STALE");
    assert!(
        String::from_utf8_lossy(&body).contains("\"hit\":1"),
        "served the stale body"
    );
    // Exactly one background refresh.
    let started = Instant::now();
    while echo.hits.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fresh, body) = x_cache(&p, path).await;
    assert_eq!(fresh, "HIT");
    assert!(
        String::from_utf8_lossy(&body).contains("\"hit\":2"),
        "refreshed entry"
    );
    assert_eq!(echo.hits.load(Ordering::SeqCst), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_within_the_window_then_502() {
    let o = Origin::start(500, "cache_control: { products_s_maxage: 1s }").await;
    let p = cached_proxy(&o, "0s", "2s");
    let path = "/api/v1/products?category=linen&limit=3";
    let (miss, fresh_body) = x_cache(&p, path).await;
    assert_eq!(miss, "MISS");
    let stored = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let Origin { origin, .. } = o;
    origin.stop().await;

    let (stale, body) = x_cache(&p, path).await;
    assert_eq!(stale, "STALE");
    assert_eq!(body, fresh_body);
    // Past expiry (1 s) + stale_if_error (2 s): the error shows.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(stored.elapsed()) + Duration::from_millis(500),
    )
    .await;
    assert_eq!(p.get(path).await.status(), 502);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_revalidate_with_the_etag() {
    let o = Origin::start(500, "cache_control: { products_s_maxage: 1s }").await;
    let p = cached_proxy(&o, "0s", "0s");
    let path = "/api/v1/products?category=denim&limit=4";
    let (miss, a) = x_cache(&p, path).await;
    assert_eq!(miss, "MISS");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (revalidated, b) = x_cache(&p, path).await;
    assert_eq!(revalidated, "REVALIDATED");
    assert_eq!(a, b);
    assert_eq!(origin_listings(&o, "304").await, 1.0);
    assert_eq!(x_cache(&p, path).await.0, "HIT");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_accept_encoding_keeps_variants_apart() {
    let o = Origin::start(500, "").await;
    let p = cached_proxy(&o, "30s", "5m");
    let path = "/api/v1/products?category=tee&limit=2";
    let get = |enc: Option<&'static str>| {
        let mut r = p.http.get(p.url(path));
        if let Some(e) = enc {
            r = r.header("accept-encoding", e);
        }
        async move {
            r.send().await.unwrap().headers()["x-cache"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(get(Some("gzip")).await, "MISS");
    assert_eq!(get(None).await, "MISS");
    assert_eq!(get(Some("gzip")).await, "HIT");
    assert_eq!(get(None).await, "HIT");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_need_the_token_and_remove_exactly_their_entries() {
    let o = Origin::start(1_000, "").await;
    let p = cached_proxy(&o, "30s", "5m");
    let polo = [
        "/api/v1/products?category=polo&limit=5",
        "/api/v1/products?category=polo&limit=6",
        "/api/v1/products?category=polo&limit=5&cursor=djE6MTAw",
    ];
    let linen = "/api/v1/products?category=linen&limit=5";
    for path in polo.iter().chain([&linen]) {
        x_cache(&p, path).await;
        assert_eq!(x_cache(&p, path).await.0, "HIT");
    }
    let purge = |query: &str, token: Option<&str>| {
        let mut r = p.http.post(format!("{}/cache/purge?{query}", p.admin));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap() }
    };
    let denied = purge("category=polo", None).await;
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().contains_key("www-authenticate"));
    assert_eq!(
        purge("category=polo", Some("wrong-token-0123456789"))
            .await
            .status(),
        401
    );
    for path in polo {
        assert_eq!(
            x_cache(&p, path).await.0,
            "HIT",
            "a refused purge removed {path}"
        );
    }

    let ok = purge("category=polo", Some(TOKEN)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<serde_json::Value>().await.unwrap()["purged"], 3);
    for path in polo {
        assert_eq!(
            x_cache(&p, path).await.0,
            "MISS",
            "{path} survived the purge"
        );
    }
    assert_eq!(
        x_cache(&p, linen).await.0,
        "HIT",
        "another category was purged"
    );

    let by_url = purge(&format!("url={}", urlencode(linen)), Some(TOKEN)).await;
    assert_eq!(
        by_url.json::<serde_json::Value>().await.unwrap()["purged"],
        1
    );
    assert_eq!(x_cache(&p, linen).await.0, "MISS");
    p.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('%', "%25")
        .replace('&', "%26")
        .replace('=', "%3D")
        .replace('?', "%3F")
}
