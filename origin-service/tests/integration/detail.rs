//! The product detail: fan-out composition, the item cache, 304, not found.

use crate::common::TestOrigin;

#[tokio::test]
async fn detail_combines_product_price_stock_and_recommendations() {
    let t = TestOrigin::start(2_000, "").await;
    let acquires_before = t.metric("origin_db_pool_acquires_total").await;
    let (status, body) = t.get_json("/api/v1/products/42").await;
    assert_eq!(status, 200);
    let acquires_after = t.metric("origin_db_pool_acquires_total").await;
    // Four parts, each on its own pooled connection (the two /metrics reads acquire none).
    assert_eq!(acquires_after - acquires_before, 4.0);

    assert_eq!(body["id"], 42);
    let category = body["category"].as_str().unwrap().to_string();
    assert!(body["description"].as_str().unwrap().len() > 100);
    assert!(body["price"]["amount_cents"].as_i64().unwrap() > 0);
    assert_eq!(body["price"]["currency"], "USD");
    let sizes: Vec<&str> = body["stock"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["size"].as_str().unwrap())
        .collect();
    assert_eq!(sizes, ["S", "M", "L", "XL", "XXL"]);
    let in_stock = body["stock"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["quantity"].as_i64().unwrap() > 0);
    assert_eq!(body["in_stock"], in_stock);

    let recs = body["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 4);
    for rec in recs {
        let id = rec["id"].as_i64().unwrap();
        assert_ne!(id, 42);
        let (status, other) = t.get_json(&format!("/api/v1/products/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(other["category"], category.as_str(), "recommendation {id}");
        assert_eq!(other["name"], rec["name"]);
        assert_eq!(other["price"]["amount_cents"], rec["price_cents"]);
    }
}

#[tokio::test]
async fn item_cache_serves_repeats_without_touching_the_database() {
    let t = TestOrigin::start(1_000, "").await;
    let first = t.get("/api/v1/products/7").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "public, s-maxage=60");
    let etag = first.headers()["etag"].clone();
    let body = first.bytes().await.unwrap();

    let acquires = t.metric("origin_db_pool_acquires_total").await;
    for _ in 0..5 {
        let again = t.get("/api/v1/products/7").await;
        assert_eq!(again.headers()["etag"], etag);
        assert_eq!(again.bytes().await.unwrap(), body);
    }
    assert_eq!(t.metric("origin_db_pool_acquires_total").await, acquires);
    assert_eq!(
        t.metric(r#"origin_item_cache_requests_total{result="miss"}"#)
            .await,
        1.0
    );
    assert_eq!(
        t.metric(r#"origin_item_cache_requests_total{result="hit"}"#)
            .await,
        5.0
    );
    assert_eq!(t.metric("origin_item_cache_entries").await, 1.0);

    let not_modified = t
        .client
        .get(t.url("/api/v1/products/7"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
}

#[tokio::test]
async fn item_cache_entries_expire_after_their_ttl() {
    let t = TestOrigin::start(500, "item_cache: { ttl: 200ms }").await;
    assert_eq!(t.get("/api/v1/products/3").await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(t.get("/api/v1/products/3").await.status(), 200);
    assert_eq!(
        t.metric(r#"origin_item_cache_requests_total{result="miss"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn missing_product_is_404_and_not_cached() {
    let t = TestOrigin::start(500, "").await;
    for _ in 0..2 {
        let (status, body) = t.get_json("/api/v1/products/900000").await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "product_not_found");
    }
    assert_eq!(t.metric("origin_item_cache_entries").await, 0.0);
}

#[tokio::test]
async fn fan_out_works_one_query_at_a_time_too() {
    let t = TestOrigin::start(
        500,
        "catalog: { detail_fanout_concurrency: 1 }\ndatabase: { pool: { max_connections: 1, min_idle: 1 } }",
    )
    .await;
    let (status, body) = t.get_json("/api/v1/products/11").await;
    assert_eq!(status, 200);
    assert_eq!(body["recommendations"].as_array().unwrap().len(), 4);
}
