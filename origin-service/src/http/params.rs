//! Query-string and path parameters, validated into catalog queries with precise 400 messages.

use crate::catalog::listing::ListingQuery;
use crate::config::CatalogConfig;
use crate::http::cursor;
use crate::http::error::ApiError;

const MAX_CATEGORY_LEN: usize = 64;

/// `category` (required), `limit` (1..=max_limit), `cursor` (opaque); other parameters ignored.
pub fn listing_query(query: Option<&str>, cfg: &CatalogConfig) -> Result<ListingQuery, ApiError> {
    let (mut category, mut limit, mut cursor) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match key.as_ref() {
            "category" => &mut category,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::BadRequest(format!(
                "query parameter `{key}` is given more than once"
            )));
        }
        *slot = Some(value.into_owned());
    }

    let category = category.ok_or_else(|| {
        ApiError::BadRequest("query parameter `category` is required, e.g. ?category=polo".into())
    })?;
    if category.is_empty() || category.len() > MAX_CATEGORY_LEN {
        return Err(ApiError::BadRequest(format!(
            "`category` must be 1 to {MAX_CATEGORY_LEN} characters"
        )));
    }

    let limit = match limit {
        None => cfg.default_limit,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=cfg.max_limit).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`limit` must be an integer from 1 to {}, got `{raw}`",
                    cfg.max_limit
                ))
            })?,
    };

    let after_id = match cursor {
        None => 0,
        Some(raw) => cursor::decode(&raw).ok_or_else(|| {
            ApiError::BadRequest(
                "`cursor` is not valid; pass back the `next_cursor` of the previous page".into(),
            )
        })?,
    };

    Ok(ListingQuery {
        category,
        after_id,
        limit,
    })
}

/// A product id path segment: a positive 64-bit integer.
pub fn product_id(segment: &str) -> Result<i64, ApiError> {
    segment
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "product id must be a positive integer, got `{segment}`"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CatalogConfig {
        CatalogConfig {
            default_limit: 20,
            max_limit: 200,
            detail_fanout_concurrency: 4,
        }
    }

    #[test]
    fn defaults_and_ignored_parameters() {
        let q = listing_query(Some("category=polo&utm_source=x"), &cfg()).unwrap();
        assert_eq!((q.category.as_str(), q.limit, q.after_id), ("polo", 20, 0));
    }

    #[test]
    fn percent_decoding_and_cursor() {
        let c = cursor::encode(99);
        let q =
            listing_query(Some(&format!("category=po%6Co&limit=5&cursor={c}")), &cfg()).unwrap();
        assert_eq!((q.category.as_str(), q.limit, q.after_id), ("polo", 5, 99));
    }

    #[test]
    fn bad_inputs_are_rejected() {
        for query in [
            None,
            Some("category="),
            Some("category=polo&limit=0"),
            Some("category=polo&limit=201"),
            Some("category=polo&limit=-1"),
            Some("category=polo&limit=ten"),
            Some("category=polo&cursor=zzz"),
            Some("category=polo&category=linen"),
        ] {
            assert!(
                matches!(listing_query(query, &cfg()), Err(ApiError::BadRequest(_))),
                "{query:?}"
            );
        }
    }

    #[test]
    fn product_ids() {
        assert_eq!(product_id("42").unwrap(), 42);
        for bad in ["", "0", "-3", "abc", "1.5", "99999999999999999999"] {
            assert!(product_id(bad).is_err(), "{bad}");
        }
    }
}
