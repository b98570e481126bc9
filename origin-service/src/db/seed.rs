//! Deterministic catalog generator: the same seed and product count always give the same rows.
//! Rows are inserted in one transaction with multi-row INSERTs to keep seeding quick.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

/// (slug, display name, material, base price in cents)
pub const CATEGORIES: &[(&str, &str, &str, i64)] = &[
    ("polo", "Polo Shirt", "cotton piqué", 3900),
    ("oxford", "Oxford Shirt", "oxford cloth cotton", 5900),
    ("flannel", "Flannel Shirt", "brushed cotton flannel", 4900),
    ("linen", "Linen Shirt", "European linen", 6900),
    ("denim", "Denim Shirt", "selvedge denim", 7900),
    ("chambray", "Chambray Shirt", "cotton chambray", 5400),
    ("henley", "Henley", "slub cotton jersey", 3400),
    ("tee", "T-Shirt", "combed cotton jersey", 1900),
    ("hawaiian", "Hawaiian Shirt", "printed rayon", 4400),
    ("dress", "Dress Shirt", "two-ply poplin", 6400),
    ("overshirt", "Overshirt", "heavy cotton twill", 8900),
    ("rugby", "Rugby Shirt", "heavyweight cotton", 6900),
    ("poplin", "Poplin Shirt", "cotton poplin", 4900),
    ("corduroy", "Corduroy Shirt", "fine-wale corduroy", 6400),
];

pub const BRANDS: &[&str] = &[
    "Harbor & Pine",
    "Northwind",
    "Atlas Supply",
    "Saltmarsh",
    "Kestrel",
    "Old Quarry",
    "Bluefin",
    "Copper Lane",
    "Fieldhouse",
    "Marlowe",
    "Tidewater",
    "Greyhaven",
    "Juniper & Co",
    "Ironbark",
    "Lowland",
    "Sable",
    "Wrenfield",
    "Dune Road",
    "Foxglove",
    "Bramble",
];

pub const COLORS: &[&str] = &[
    "white",
    "navy",
    "black",
    "sky blue",
    "heather grey",
    "forest green",
    "burgundy",
    "sand",
    "olive",
    "charcoal",
    "red",
    "stone",
    "indigo",
    "rust",
    "lavender",
    "mint",
    "mustard",
    "teal",
];

pub const FITS: &[&str] = &["slim", "regular", "relaxed", "classic"];

/// Sizes in display order; their position is `size_rank`.
pub const SIZES: &[&str] = &["S", "M", "L", "XL", "XXL"];

pub const RECOMMENDATIONS_PER_PRODUCT: usize = 4;

/// Rows per multi-row INSERT: well under SQLite's bound-variable limit for every table.
const BATCH: usize = 500;

struct Product {
    id: i64,
    category: usize,
    brand: usize,
    color: &'static str,
    fit: &'static str,
    price_cents: i64,
    compare_at_cents: Option<i64>,
    stock: [i64; 5],
}

pub async fn product_count(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await
}

fn generate(products: u32, seed: u64) -> Vec<Product> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (1..=i64::from(products))
        .map(|id| {
            let category = rng.gen_range(0..CATEGORIES.len());
            let base = CATEGORIES[category].3;
            // Prices end in 99 cents, within -20%..+60% of the category's base price.
            let dollars = (base * rng.gen_range(80..160) / 100) / 100;
            let price_cents = dollars * 100 + 99;
            let compare_at_cents = rng
                .gen_bool(0.2)
                .then(|| price_cents + rng.gen_range(5..30) * 100);
            let mut stock = [0; 5];
            for quantity in &mut stock {
                *quantity = if rng.gen_bool(0.1) {
                    0
                } else {
                    rng.gen_range(1..120)
                };
            }
            Product {
                id,
                category,
                brand: rng.gen_range(0..BRANDS.len()),
                color: COLORS[rng.gen_range(0..COLORS.len())],
                fit: FITS[rng.gen_range(0..FITS.len())],
                price_cents,
                compare_at_cents,
                stock,
            }
        })
        .collect()
}

fn name(p: &Product) -> String {
    let (_, category, _, _) = CATEGORIES[p.category];
    format!(
        "{} {} {} ({} fit)",
        BRANDS[p.brand], p.color, category, p.fit
    )
}

fn description(p: &Product) -> String {
    let (_, category, material, _) = CATEGORIES[p.category];
    format!(
        "A {fit}-fit {cat} in {material}, dyed {color}. Cut by {brand} with reinforced seams, \
         a clean placket and a tail that sits right tucked or untucked. Machine wash cold, hang \
         dry; pre-shrunk so the size you buy is the size you keep.",
        fit = p.fit,
        cat = category.to_lowercase(),
        color = p.color,
        brand = BRANDS[p.brand],
    )
}

/// Picks recommendations from the same category, never the product itself, without repeats.
fn recommendations(products: &[Product], seed: u64) -> Vec<(i64, i64, i64)> {
    let mut by_category: Vec<Vec<i64>> = vec![Vec::new(); CATEGORIES.len()];
    for p in products {
        by_category[p.category].push(p.id);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_7ec5);
    let mut rows = Vec::with_capacity(products.len() * RECOMMENDATIONS_PER_PRODUCT);
    for p in products {
        let peers = &by_category[p.category];
        let picks = peers
            .choose_multiple(&mut rng, RECOMMENDATIONS_PER_PRODUCT + 1)
            .filter(|&&id| id != p.id)
            .take(RECOMMENDATIONS_PER_PRODUCT);
        for (rank, &recommended) in picks.enumerate() {
            rows.push((p.id, rank as i64, recommended));
        }
    }
    rows
}

/// Replaces the whole catalog with `products` deterministic products.
pub async fn seed_catalog(pool: &SqlitePool, products: u32, seed: u64) -> Result<(), sqlx::Error> {
    let rows = generate(products, seed);
    let recs = recommendations(&rows, seed);
    let mut tx = pool.begin().await?;
    for table in [
        "recommendations",
        "stock",
        "prices",
        "products",
        "brands",
        "categories",
    ] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *tx)
            .await?;
    }

    let mut q =
        QueryBuilder::<Sqlite>::new("INSERT INTO categories (id, slug, name, description) ");
    q.push_values(
        CATEGORIES.iter().enumerate(),
        |mut b, (i, (slug, name, material, _))| {
            b.push_bind(i as i64 + 1)
                .push_bind(*slug)
                .push_bind(format!("{name}s"))
                .push_bind(format!("{name}s in {material}."));
        },
    );
    q.build().execute(&mut *tx).await?;

    let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO brands (id, name) ");
    q.push_values(BRANDS.iter().enumerate(), |mut b, (i, name)| {
        b.push_bind(i as i64 + 1).push_bind(*name);
    });
    q.build().execute(&mut *tx).await?;

    for chunk in rows.chunks(BATCH) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO products (id, sku, category_id, brand_id, name, color, fit, material, description, created_at) ",
        );
        q.push_values(chunk, |mut b, p| {
            let (slug, _, material, _) = CATEGORIES[p.category];
            // One product a day, going back from 2026-01-01T00:00:00Z, so `created_at` is stable.
            let created_at = 1_767_225_600 - (p.id % 3650) * 86_400;
            b.push_bind(p.id)
                .push_bind(format!("{}-{:06}", slug.to_uppercase(), p.id))
                .push_bind(p.category as i64 + 1)
                .push_bind(p.brand as i64 + 1)
                .push_bind(name(p))
                .push_bind(p.color)
                .push_bind(p.fit)
                .push_bind(material)
                .push_bind(description(p))
                .push_bind(created_at);
        });
        q.build().execute(&mut *tx).await?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO prices (product_id, amount_cents, currency, compare_at_cents) ",
        );
        q.push_values(chunk, |mut b, p| {
            b.push_bind(p.id)
                .push_bind(p.price_cents)
                .push_bind("USD")
                .push_bind(p.compare_at_cents);
        });
        q.build().execute(&mut *tx).await?;

        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO stock (product_id, size, size_rank, quantity) ",
        );
        let sized = chunk.iter().flat_map(|p| {
            SIZES
                .iter()
                .enumerate()
                .map(move |(rank, size)| (p, rank, *size))
        });
        q.push_values(sized, |mut b, (p, rank, size)| {
            b.push_bind(p.id)
                .push_bind(size)
                .push_bind(rank as i64)
                .push_bind(p.stock[rank]);
        });
        q.build().execute(&mut *tx).await?;
    }

    for chunk in recs.chunks(BATCH) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO recommendations (product_id, rank, recommended_id) ",
        );
        q.push_values(chunk, |mut b, (product, rank, recommended)| {
            b.push_bind(*product)
                .push_bind(*rank)
                .push_bind(*recommended);
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_covers_every_category() {
        let a = generate(2_000, 7);
        let b = generate(2_000, 7);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| name(x) == name(y) && x.price_cents == y.price_cents));
        let mut seen = [false; CATEGORIES.len()];
        for p in &a {
            seen[p.category] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn recommendations_stay_in_category_and_never_point_at_self() {
        let products = generate(1_000, 3);
        for (product, _, recommended) in recommendations(&products, 3) {
            assert_ne!(product, recommended);
            let cat = |id: i64| products[(id - 1) as usize].category;
            assert_eq!(cat(product), cat(recommended));
        }
    }
}
