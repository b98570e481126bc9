//! The product detail: the product row, its price, its stock by size and its recommendations,
//! fetched concurrently on separate pooled connections with bounded concurrency. The first error
//! drops (cancels) the remaining fetches; the caller wraps the whole fan-out in one deadline.

use futures::future::BoxFuture;
use futures::{stream, FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;

use super::CatalogError;
use crate::db::Database;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ProductCore {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub brand: String,
    pub color: String,
    pub fit: String,
    pub material: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Price {
    pub amount_cents: i64,
    pub currency: String,
    pub compare_at_cents: Option<i64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SizeStock {
    pub size: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recommendation {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProductDetail {
    #[serde(flatten)]
    pub product: ProductCore,
    pub price: Option<Price>,
    pub stock: Vec<SizeStock>,
    pub in_stock: bool,
    pub recommendations: Vec<Recommendation>,
}

enum Part {
    Core(Option<ProductCore>),
    Price(Option<Price>),
    Stock(Vec<SizeStock>),
    Recommendations(Vec<Recommendation>),
}

async fn core(db: &Database, id: i64) -> Result<Part, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let row = sqlx::query_as(
        "SELECT p.id, p.sku, p.name, c.slug AS category, b.name AS brand, p.color, p.fit, \
                p.material, p.description, p.created_at \
         FROM products p \
         JOIN categories c ON c.id = p.category_id \
         JOIN brands b ON b.id = p.brand_id \
         WHERE p.id = ?1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Part::Core(row))
}

async fn price(db: &Database, id: i64) -> Result<Part, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let row = sqlx::query_as(
        "SELECT amount_cents, currency, compare_at_cents FROM prices WHERE product_id = ?1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Part::Price(row))
}

async fn stock(db: &Database, id: i64) -> Result<Part, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let rows =
        sqlx::query_as("SELECT size, quantity FROM stock WHERE product_id = ?1 ORDER BY size_rank")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(Part::Stock(rows))
}

async fn recommendations(db: &Database, id: i64) -> Result<Part, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let rows = sqlx::query_as(
        "SELECT p.id, p.name, pr.amount_cents AS price_cents \
         FROM recommendations r \
         JOIN products p ON p.id = r.recommended_id \
         JOIN prices pr ON pr.product_id = p.id \
         WHERE r.product_id = ?1 \
         ORDER BY r.rank",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Part::Recommendations(rows))
}

/// Fetches the four parts with at most `concurrency` in flight; the first error wins.
pub async fn fetch(
    db: &Database,
    id: i64,
    concurrency: usize,
) -> Result<ProductDetail, CatalogError> {
    let fetches: Vec<BoxFuture<'_, Result<Part, sqlx::Error>>> = vec![
        core(db, id).boxed(),
        price(db, id).boxed(),
        stock(db, id).boxed(),
        recommendations(db, id).boxed(),
    ];
    let parts: Vec<Part> = stream::iter(fetches)
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;

    let mut detail = None;
    let (mut price, mut stock, mut recs) = (None, Vec::new(), Vec::new());
    for part in parts {
        match part {
            Part::Core(row) => detail = row,
            Part::Price(row) => price = row,
            Part::Stock(rows) => stock = rows,
            Part::Recommendations(rows) => recs = rows,
        }
    }
    let product = detail.ok_or(CatalogError::NotFound(id))?;
    Ok(ProductDetail {
        product,
        price,
        in_stock: stock.iter().any(|s| s.quantity > 0),
        stock,
        recommendations: recs,
    })
}
