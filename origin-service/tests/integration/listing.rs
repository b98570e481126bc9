//! The category listing: projection, headers, keyset pagination, determinism, 304.

use std::collections::BTreeSet;

use crate::common::TestOrigin;

async fn polo_ids_in_db(t: &TestOrigin) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT p.id FROM products p JOIN categories c ON c.id = p.category_id \
         WHERE c.slug = 'polo' ORDER BY p.id",
    )
    .fetch_all(t.origin.database().pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn first_page_has_five_polos_with_cache_headers() {
    let t = TestOrigin::start(2_000, "").await;
    let response = t.get("/api/v1/products?category=polo&limit=5").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "public, s-maxage=30");
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert_eq!(headers["content-type"], "application/json");
    let etag = headers["etag"].to_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );

    let body: serde_json::Value = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let expected = polo_ids_in_db(&t).await;
    let got: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(got, expected[..5]);
    for item in items {
        assert!(item["sku"].as_str().unwrap().starts_with("POLO-"));
        assert!(item["name"].as_str().unwrap().contains("Polo Shirt"));
        assert!(item["price_cents"].as_i64().unwrap() > 0);
        // Column projection: the listing never carries the long description.
        assert!(item.get("description").is_none());
    }
    assert!(body["next_cursor"].is_string());
}

#[tokio::test]
async fn pagination_walks_to_the_end_without_duplicates_or_gaps() {
    let t = TestOrigin::start(3_000, "").await;
    let expected = polo_ids_in_db(&t).await;
    assert!(
        expected.len() > 100,
        "catalog too small: {}",
        expected.len()
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/products?category=polo&limit=37".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = t.get_json(&path).await;
        assert_eq!(status, 200);
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 37);
        seen.extend(items.iter().map(|i| i["id"].as_i64().unwrap()));
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 1_000, "pagination does not terminate");
    }
    assert_eq!(pages, expected.len().div_ceil(37));
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates across pages");
    assert_eq!(seen, expected, "gaps or wrong order");
}

#[tokio::test]
async fn unknown_category_is_an_empty_page() {
    let t = TestOrigin::start(500, "").await;
    let (status, body) = t.get_json("/api/v1/products?category=kilt").await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
    assert!(body["next_cursor"].is_null());
}

#[tokio::test]
async fn if_none_match_gets_304_and_a_changed_page_does_not() {
    let t = TestOrigin::start(1_000, "").await;
    let first = t.get("/api/v1/products?category=linen&limit=10").await;
    let etag = first.headers()["etag"].to_str().unwrap().to_string();

    for validator in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
    ] {
        let again = t
            .client
            .get(t.url("/api/v1/products?category=linen&limit=10"))
            .header("if-none-match", validator)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert_eq!(again.headers()["cache-control"], "public, s-maxage=30");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let other_page = t
        .client
        .get(t.url("/api/v1/products?category=linen&limit=11"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(other_page.status(), 200);
    assert_eq!(
        t.metric(r#"origin_http_requests_total{route="products",status="304"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn same_seed_same_catalog_same_etags() {
    let a = TestOrigin::start(1_500, "").await;
    let b = TestOrigin::start(1_500, "").await;
    for path in [
        "/api/v1/products?category=denim&limit=50",
        "/api/v1/products/777",
        "/api/v1/categories",
    ] {
        let ea = a.get(path).await.headers()["etag"].clone();
        let eb = b.get(path).await.headers()["etag"].clone();
        assert_eq!(ea, eb, "{path}");
    }
}

#[tokio::test]
async fn default_catalog_has_50k_products_over_at_least_12_categories() {
    let t = TestOrigin::start(50_000, "").await;
    assert_eq!(t.origin.products(), 50_000);
    let (status, body) = t.get_json("/api/v1/categories").await;
    assert_eq!(status, 200);
    let categories = body["categories"].as_array().unwrap();
    assert!(categories.len() >= 12);
    let total: i64 = categories
        .iter()
        .map(|c| c["product_count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 50_000);
    for slug in ["polo", "oxford", "flannel", "linen", "denim"] {
        assert!(categories.iter().any(|c| c["slug"] == slug), "{slug}");
    }
    let sizes: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT size FROM stock ORDER BY size_rank")
            .fetch_all(t.origin.database().pool())
            .await
            .unwrap();
    assert_eq!(sizes, ["S", "M", "L", "XL", "XXL"]);
}
