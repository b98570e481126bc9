//! The `metrics-export` plugin through the real proxy: business series by category, brand,
//! size, status class, cache result and client class on `/metrics`, a latency histogram, and
//! the cardinality guard holding against hostile query strings.

use crate::common::{start_counting_echo, Origin};
use crate::shop::{self, in_both_shapes, Shape, DEV_KEY, PARTNER_KEY};

fn requests(
    shape: Shape,
    category: &str,
    brand: &str,
    size: &str,
    status: &str,
    cache: &str,
    class: &str,
) -> String {
    format!(
        r#"edge_plugin_shop_requests_total{{brand="{brand}",cache="{cache}",category="{category}",client_class="{class}",plugin="{plugin}",size="{size}",status_class="{status}"}}"#,
        plugin = shape.metrics_plugin(),
    )
}

async fn business_series_by_category_brand_size_status_cache_and_client(shape: Shape) {
    let (origin, echo) = (Origin::start(300, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    let path = "/api/v1/products?category=polo&brand=acme&size=M&limit=3";
    for key in [DEV_KEY, DEV_KEY, PARTNER_KEY] {
        let r = p
            .http
            .get(p.url(path))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let miss = requests(shape, "polo", "acme", "M", "2xx", "MISS", "internal");
    let hit = requests(shape, "polo", "acme", "M", "2xx", "HIT", "internal");
    let partner = requests(shape, "polo", "acme", "M", "2xx", "HIT", "partner");
    assert_eq!(
        p.eventually_metric(&partner, 1.0).await,
        1.0,
        "{}",
        p.metrics_text().await
    );
    assert_eq!(p.metric(&miss).await, 1.0);
    assert_eq!(p.metric(&hit).await, 1.0);
    // A 404 from the origin (not stored: X-Cache BYPASS), no brand or size.
    let r = p
        .http
        .get(p.url("/api/v1/products/999999999?category=tee"))
        .header("x-api-key", DEV_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let not_found = requests(shape, "tee", "none", "none", "4xx", "BYPASS", "internal");
    assert_eq!(
        p.eventually_metric(&not_found, 1.0).await,
        1.0,
        "{}",
        p.metrics_text().await
    );
    // Latency histogram, in microseconds.
    let count = format!(
        r#"edge_plugin_shop_request_duration_us_count{{cache="HIT",category="polo",plugin="{}",status_class="2xx"}}"#,
        shape.metrics_plugin()
    );
    assert_eq!(p.metric(&count).await, 2.0);
    let sum = format!(
        r#"edge_plugin_shop_request_duration_us_sum{{cache="HIT",category="polo",plugin="{}",status_class="2xx"}}"#,
        shape.metrics_plugin()
    );
    assert!(p.metric(&sum).await > 0.0);
    p.stop().await;
}

async fn hostile_query_strings_cannot_create_series(shape: Shape) {
    let (origin, echo) = (Origin::start(300, "").await, start_counting_echo().await);
    let p = shop::start(&origin, echo.addr, shape);
    for i in 0..60 {
        let path = format!("/api/v1/products?category=evil-{i}&brand=b{i}&size=XXXXXL{i}&limit=1");
        let r = p
            .http
            .get(p.url(&path))
            .header("x-api-key", DEV_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let other = requests(shape, "other", "other", "other", "2xx", "MISS", "internal");
    assert_eq!(
        p.eventually_metric(&other, 60.0).await,
        60.0,
        "{}",
        p.metrics_text().await
    );
    let text = p.metrics_text().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("edge_plugin_shop_requests_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:#?}");
    assert!(!text.contains("evil-"), "a hostile value reached /metrics");
    p.stop().await;
}

in_both_shapes!(
    business_series_by_category_brand_size_status_cache_and_client,
    hostile_query_strings_cannot_create_series
);
