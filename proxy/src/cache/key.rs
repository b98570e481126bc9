//! The explicit cache key: route, host, path and only the route's allowed query parameters,
//! sorted (so `?limit=5&category=polo&utm=x` and `?category=polo&limit=5` share an entry). The
//! tag parameter's value (e.g. the category) becomes the key's `user_tag`, which the storage
//! indexes for purges.

use std::borrow::Cow;
use std::fmt::Write;

use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;

use crate::routing::CachePolicy;

/// Longest tag kept; a longer value is not indexed (it still caches, it just cannot be purged
/// by tag).
const MAX_TAG_LEN: usize = 64;

/// The key for a request on `route` (host lowercased; query reduced to the allowed parameters).
pub fn cache_key(
    route: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    policy: &CachePolicy,
) -> CacheKey {
    // Decoded pairs borrow from the query unless they needed unescaping.
    let mut kept: Vec<(Cow<'_, str>, Cow<'_, str>)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, _)| policy.key_query_params.iter().any(|p| p == k.as_ref()))
            .collect();
    kept.sort();
    let tag = policy
        .tag_query_param
        .as_ref()
        .and_then(|t| kept.iter().find(|(k, _)| k == t))
        .map(|(_, v)| v.as_ref())
        .filter(|v| v.len() <= MAX_TAG_LEN)
        .unwrap_or_default();
    // Unit separators between components and length-prefixed values keep the key unambiguous
    // whatever the decoded values contain.
    let mut primary = String::with_capacity(route.len() + host.len() + path.len() + 64);
    primary.push_str(route);
    primary.push('\u{1f}');
    primary.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    primary.push('\u{1f}');
    primary.push_str(path);
    for (k, v) in &kept {
        primary.push('\u{1f}');
        primary.push_str(k);
        primary.push('=');
        let _ = write!(primary, "{}", v.len());
        primary.push(':');
        primary.push_str(v);
    }
    let mut key = CacheKey::new(primary, tag);
    // Pingora hashes the primary key each time it is asked for it (lock, lookup, storage):
    // hash it once here and pin the result.
    let hash = key.primary_bin();
    key.set_primary_bin_override(hash);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> CachePolicy {
        CachePolicy {
            key_query_params: vec!["category".into(), "cursor".into(), "limit".into()],
            tag_query_param: Some("category".into()),
            default_ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            lock_timeout: Duration::from_secs(1),
        }
    }

    fn key(host: &str, path: &str, query: &str) -> CacheKey {
        cache_key("catalog", host, path, Some(query), &policy())
    }

    #[test]
    fn order_and_unknown_parameters_do_not_matter() {
        let a = key("edge", "/api/v1/products", "category=polo&limit=5");
        let b = key(
            "EDGE",
            "/api/v1/products",
            "limit=5&utm_source=mail&category=polo",
        );
        assert_eq!(a.combined_bin(), b.combined_bin());
        assert_eq!(a.user_tag(), "polo");
    }

    #[test]
    fn key_parameters_host_and_path_do_matter() {
        let base = key("edge", "/api/v1/products", "category=polo&limit=5");
        for other in [
            key("edge", "/api/v1/products", "category=polo&limit=6"),
            key("edge", "/api/v1/products", "category=linen&limit=5"),
            key("other", "/api/v1/products", "category=polo&limit=5"),
            key("edge", "/api/v1/products/", "category=polo&limit=5"),
            key(
                "edge",
                "/api/v1/products",
                "category=polo&limit=5&cursor=djE6MQ",
            ),
        ] {
            assert_ne!(base.combined_bin(), other.combined_bin());
        }
    }

    #[test]
    fn values_cannot_forge_other_parameters() {
        // "limit=5&cursor=x" smuggled inside one value must not equal the real two parameters.
        let real = key("edge", "/p", "category=polo&cursor=x&limit=5");
        let forged = key("edge", "/p", "category=polo%26cursor%3Dx&limit=5");
        assert_ne!(real.combined_bin(), forged.combined_bin());
    }

    #[test]
    fn no_tag_without_the_parameter() {
        assert_eq!(key("edge", "/api/v1/categories", "").user_tag(), "");
    }
}

#[cfg(test)]
mod properties {
    use super::cache_key;
    use crate::routing::CachePolicy;
    use pingora::cache::key::CacheHashKey;
    use proptest::prelude::*;
    use std::time::Duration;

    fn policy() -> CachePolicy {
        CachePolicy {
            key_query_params: vec!["category".into(), "cursor".into(), "limit".into()],
            tag_query_param: Some("category".into()),
            default_ttl: Duration::from_secs(1),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            lock_timeout: Duration::from_secs(1),
        }
    }

    fn pair() -> impl Strategy<Value = (String, String)> {
        (
            prop_oneof![
                Just("category"),
                Just("cursor"),
                Just("limit"),
                Just("utm"),
                Just("x")
            ],
            "[a-z0-9%=&+]{0,6}",
        )
            .prop_map(|(k, v)| (k.to_string(), v))
    }

    proptest! {
        /// Parameter order and parameters outside the policy never change the key; the same
        /// pairs after normalisation give the same key.
        #[test]
        fn order_and_foreign_parameters_do_not_matter(pairs in proptest::collection::vec(pair(), 0..8), shuffle in any::<prop::sample::Index>()) {
            let query = |pairs: &[(String, String)]| {
                pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
            };
            let key = |q: &str| cache_key("r", "Host", "/p", Some(q), &policy()).primary_bin();
            // Keys that appear once: their relative order is free to change.
            let mut seen = std::collections::BTreeSet::new();
            let unique: Vec<_> = pairs.iter().filter(|(k, _)| seen.insert(k.clone())).cloned().collect();
            let mut rotated = unique.clone();
            if !rotated.is_empty() {
                let by = shuffle.index(rotated.len());
                rotated.rotate_left(by);
            }
            prop_assert_eq!(key(&query(&unique)), key(&query(&rotated)));
            let kept: Vec<_> = unique.iter().filter(|(k, _)| k != "utm" && k != "x").cloned().collect();
            prop_assert_eq!(key(&query(&unique)), key(&query(&kept)));
            let normal = crate::normalize::request_target(&format!("/p?{}", query(&unique))).into_owned();
            let normal_query = normal.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
            prop_assert_eq!(key(&query(&unique)), key(&normal_query));
        }
    }
}
