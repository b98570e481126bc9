//! The `rate-limit` plugin through the real proxy: the 429 sequence with its headers, refill
//! over time, one bucket per client shared by every VM and worker (exact under contention),
//! and the fallback (the client address, never an unverified key) when no client id is
//! published; percent-encoded spellings meet the same rule.

use std::time::Duration;

use futures::StreamExt;

use crate::common::{start_counting_echo, Origin, Proxy};
use crate::shop::{self, in_both_shapes, Shape, DEV_KEY, PARTNER_KEY};

async fn get(p: &Proxy, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = p.http.get(p.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> u64 {
    r.headers()[name].to_str().unwrap().parse().unwrap()
}

async fn a_429_sequence_with_ratelimit_headers_then_refill(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    // Rule `tight`: 2 tokens a second, burst 3.
    for remaining in [2, 1, 0] {
        let r = get(&p, "/echo/tight", Some(DEV_KEY)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-limit"), 3);
        assert_eq!(header(&r, "ratelimit-remaining"), remaining);
        assert!((1..=2).contains(&header(&r, "ratelimit-reset")));
    }
    let refused = get(&p, "/echo/tight", Some(DEV_KEY)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), 1);
    assert_eq!(header(&refused, "ratelimit-limit"), 3);
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    assert!(header(&refused, "ratelimit-reset") >= 1);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another client has its own bucket.
    assert_eq!(
        get(&p, "/echo/tight", Some(PARTNER_KEY)).await.status(),
        200
    );
    // A token comes back every 0.5 s: one more after 0.6 s, then refused again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&p, "/echo/tight", Some(DEV_KEY)).await.status(), 200);
    assert_eq!(get(&p, "/echo/tight", Some(DEV_KEY)).await.status(), 429);
    // After the full window the whole burst is back.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let statuses: Vec<u16> = [0; 4]
        .iter()
        .map(|_| get(&p, "/echo/tight", Some(DEV_KEY)))
        .collect::<futures::stream::FuturesOrdered<_>>()
        .map(|r| r.status().as_u16())
        .collect()
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    p.stop().await;
}

async fn one_bucket_shared_by_every_vm_and_worker_is_exact_under_contention(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    // Rule `shared`: burst 100, 0.1 tokens a second: over this test's few seconds the bucket
    // math allows 100 (+1 at most if a refill lands); 50 concurrent clients send 300 requests
    // through 2 workers with 2 VMs.
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..300)
        .map(|_| get(&p, "/echo/shared", Some(DEV_KEY)))
        .buffer_unordered(50)
        .map(|r| r.status().as_u16())
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(allowed + refused, 300, "{statuses:?}");
    let expected = 100.0 + (0.1 * elapsed).floor();
    assert!(
        (allowed as f64 - expected).abs() <= 1.0,
        "allowed {allowed}, bucket math says {expected} (in {elapsed:.2} s)"
    );
    p.stop().await;
}

/// Regression: buckets on a public path were keyed by the unverified `x-api-key`, so 300
/// requests with random keys all passed. Now only a verified client id or the address names
/// a bucket.
async fn unverified_api_keys_never_name_a_bucket_the_address_does(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    // `/anon/` has no auth: rule `anon`, burst 2, 0.1 token a second.
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..300 {
        let key = format!("random-key-{i}");
        if get(&p, "/anon/x", Some(&key)).await.status() == 200 {
            allowed += 1;
        }
    }
    let refills = (0.1 * started.elapsed().as_secs_f64()).floor() as usize;
    assert!(
        allowed <= 2 + refills,
        "{allowed} of 300 random keys passed; the address bucket allows {}",
        2 + refills
    );
    // A verified client still has a bucket of its own (on an authenticated route).
    assert_eq!(get(&p, "/echo/tight", Some(DEV_KEY)).await.status(), 200);
    p.stop().await;
}

/// Regression: `category=%70olo` dodged the polo rule (matched on the raw query) while the
/// cache and the origin decoded it. One normalisation now serves the rules, the cache key and
/// the origin.
async fn percent_encoded_spellings_meet_the_same_rule_cache_entry_and_origin_path(shape: Shape) {
    let (origin, echo) = (Origin::start(200, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    // Rule `polo`: /echo/list with category=polo, burst 2.
    for _ in 0..2 {
        assert_eq!(
            get(&p, "/echo/list?category=polo", Some(DEV_KEY))
                .await
                .status(),
            200
        );
    }
    for spelling in [
        "category=%70olo",
        "category=p%6Flo&x=1",
        "%63ategory=pol%6f",
    ] {
        let r = get(&p, &format!("/echo/list?{spelling}"), Some(DEV_KEY)).await;
        assert_eq!(r.status(), 429, "{spelling} dodged the polo rule");
    }
    let tee = get(&p, "/echo/list?category=%74ee", Some(DEV_KEY)).await;
    let body: serde_json::Value = tee.json().await.unwrap();
    assert_eq!(
        body["path"], "/echo/list?category=tee",
        "the origin sees the normal form"
    );
    // The cache: both spellings are one entry.
    let key = DEV_KEY;
    let first = get(&p, "/api/v1/products?category=%70olo&limit=3", Some(key)).await;
    assert_eq!(first.headers()["x-cache"], "MISS");
    let second = get(&p, "/api/v1/products?category=polo&limit=3", Some(key)).await;
    assert_eq!(second.headers()["x-cache"], "HIT");
    p.stop().await;
}

in_both_shapes!(
    a_429_sequence_with_ratelimit_headers_then_refill,
    one_bucket_shared_by_every_vm_and_worker_is_exact_under_contention,
    unverified_api_keys_never_name_a_bucket_the_address_does,
    percent_encoded_spellings_meet_the_same_rule_cache_entry_and_origin_path
);
