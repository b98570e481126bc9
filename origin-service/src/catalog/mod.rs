//! Catalog reads: the category listing (keyset pagination in a read-only transaction), the
//! product detail (concurrent fan-out) and the category summary. Pure data access, no HTTP.

pub mod categories;
pub mod detail;
pub mod listing;

/// Why a catalog read produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} not found")]
    NotFound(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
