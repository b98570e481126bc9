//! The per-category listing: only the columns a product tile needs, keyset pagination on the
//! product id, read inside one read-only transaction.

use serde::Serialize;
use sqlx::Connection;

use super::CatalogError;
use crate::db::Database;

/// One product tile: the projection the listing needs, nothing more.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ListingItem {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub brand: String,
    pub color: String,
    pub price_cents: i64,
    pub currency: String,
}

/// What to list: a category, the last id already seen, and a page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingQuery {
    pub category: String,
    pub after_id: i64,
    pub limit: u32,
}

/// One page; `next_after_id` is set when more products follow.
#[derive(Debug, Clone)]
pub struct ListingPage {
    pub items: Vec<ListingItem>,
    pub next_after_id: Option<i64>,
}

const LISTING_SQL: &str = "\
    SELECT p.id, p.sku, p.name, b.name AS brand, p.color, pr.amount_cents AS price_cents, pr.currency \
    FROM products p \
    JOIN categories c ON c.id = p.category_id \
    JOIN brands b ON b.id = p.brand_id \
    JOIN prices pr ON pr.product_id = p.id \
    WHERE c.slug = ?1 AND p.id > ?2 \
    ORDER BY p.id \
    LIMIT ?3";

/// Reads one page. An unknown category simply has no products.
pub async fn list(db: &Database, query: &ListingQuery) -> Result<ListingPage, CatalogError> {
    let mut conn = db.acquire().await?;
    // The pool's connections are opened read-only, so this transaction is read-only.
    let mut tx = conn.begin().await?;
    let page_size = query.limit as usize;
    let mut items: Vec<ListingItem> = sqlx::query_as(LISTING_SQL)
        .bind(&query.category)
        .bind(query.after_id)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let next_after_id = if items.len() > page_size {
        items.truncate(page_size);
        items.last().map(|item| item.id)
    } else {
        None
    };
    Ok(ListingPage {
        items,
        next_after_id,
    })
}
