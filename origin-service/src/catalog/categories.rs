//! The category summary: every category with its product count (read from the covering index).

use serde::Serialize;

use super::CatalogError;
use crate::db::Database;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CategorySummary {
    pub slug: String,
    pub name: String,
    pub product_count: i64,
}

pub async fn list(db: &Database) -> Result<Vec<CategorySummary>, CatalogError> {
    let mut conn = db.acquire().await?;
    let rows = sqlx::query_as(
        "SELECT c.slug, c.name, \
                (SELECT COUNT(*) FROM products p WHERE p.category_id = c.id) AS product_count \
         FROM categories c ORDER BY c.slug",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}
