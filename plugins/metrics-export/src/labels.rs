//! The label values of one request, each bounded: a value outside its allow-list becomes
//! `other` and an absent one `none`, so a hostile query string cannot create series. The
//! allow-lists come from the config ([`Guard`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The configuration as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Allowed `category` query values.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Allowed `brand` query values.
    #[serde(default)]
    pub brands: Vec<String>,
    /// Allowed `size` query values.
    #[serde(default = "default_sizes")]
    pub sizes: Vec<String>,
    /// Client id prefix -> class (longest prefix wins); authenticated clients matching none
    /// are `authenticated`, requests without a client id `anonymous`.
    #[serde(default)]
    pub client_classes: BTreeMap<String, String>,
    /// Prefix of the metric names (the host adds `edge_plugin_`).
    #[serde(default = "default_prefix")]
    pub metric_prefix: String,
}

fn default_sizes() -> Vec<String> {
    ["XS", "S", "M", "L", "XL", "XXL"]
        .map(String::from)
        .to_vec()
}
fn default_prefix() -> String {
    "shop_".into()
}

/// The cardinality guard.
#[derive(Debug, Default)]
pub struct Guard {
    categories: Vec<String>,
    brands: Vec<String>,
    sizes: Vec<String>,
    /// Longest prefix first.
    classes: Vec<(String, String)>,
    pub metric_prefix: String,
}

/// Cache results the edge reports in `X-Cache`.
const CACHE_RESULTS: [&str; 6] = ["HIT", "MISS", "STALE", "EXPIRED", "REVALIDATED", "BYPASS"];

fn is_label_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Guard {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = if bytes.is_empty() {
            serde_json::from_slice(b"{}")
        } else {
            serde_json::from_slice(bytes)
        }
        .map_err(|e| format!("config: {e}"))?;
        for (key, list) in [
            ("categories", &raw.categories),
            ("brands", &raw.brands),
            ("sizes", &raw.sizes),
        ] {
            if let Some((i, bad)) = list.iter().enumerate().find(|(_, v)| !is_label_safe(v)) {
                return Err(format!(
                    "config.{key}[{i}]: `{bad}` is not a label value (letters, digits, `-_.`, at most 64)"
                ));
            }
        }
        for (prefix, class) in &raw.client_classes {
            if !is_label_safe(class) {
                return Err(format!(
                    "config.client_classes.{prefix}: `{class}` is not a label value"
                ));
            }
        }
        let prefix_ok = raw
            .metric_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !prefix_ok {
            return Err(format!(
                "config.metric_prefix: `{}` may hold only letters, digits and `_`",
                raw.metric_prefix
            ));
        }
        let mut classes: Vec<(String, String)> = raw.client_classes.into_iter().collect();
        classes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self {
            categories: raw.categories,
            brands: raw.brands,
            sizes: raw.sizes,
            classes,
            metric_prefix: raw.metric_prefix,
        })
    }

    fn allowed(list: &[String], value: Option<&str>) -> String {
        match value {
            None | Some("") => "none".into(),
            Some(v) if list.iter().any(|a| a == v) => v.to_string(),
            Some(_) => "other".into(),
        }
    }

    /// The request-side labels from the query string.
    pub fn request_labels(&self, query: &str) -> RequestLabels {
        let get = |name: &str| {
            query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        RequestLabels {
            category: Self::allowed(&self.categories, get("category")),
            brand: Self::allowed(&self.brands, get("brand")),
            size: Self::allowed(&self.sizes, get("size")),
        }
    }

    pub fn client_class(&self, client_id: Option<&str>) -> String {
        match client_id.filter(|c| !c.is_empty()) {
            None => "anonymous".into(),
            Some(id) => self
                .classes
                .iter()
                .find(|(prefix, _)| id.starts_with(prefix.as_str()))
                .map_or_else(|| "authenticated".into(), |(_, class)| class.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestLabels {
    pub category: String,
    pub brand: String,
    pub size: String,
}

/// `200` -> `2xx`; anything that is not a status -> `other`.
pub fn status_class(status: Option<&str>) -> &'static str {
    match status.and_then(|s| s.parse::<u16>().ok()) {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "other",
    }
}

/// The `X-Cache` value, bounded.
pub fn cache_result(x_cache: Option<&str>) -> &'static str {
    match x_cache {
        None => "none",
        Some(v) => CACHE_RESULTS
            .iter()
            .find(|r| r.eq_ignore_ascii_case(v.trim()))
            .copied()
            .unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::parse(
            br#"{"categories":["polo","tee"],"brands":["acme"],
                 "client_classes":{"dev-":"internal","partner-":"partner","partner-gold-":"gold"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn values_outside_the_allow_list_become_other() {
        let g = guard();
        let l = g.request_labels("category=polo&brand=acme&size=XL");
        assert_eq!(
            (l.category.as_str(), l.brand.as_str(), l.size.as_str()),
            ("polo", "acme", "XL")
        );
        let l = g.request_labels("category=%3Cscript%3E&brand=x1&size=XXXXL");
        assert_eq!(
            (l.category.as_str(), l.brand.as_str(), l.size.as_str()),
            ("other", "other", "other")
        );
        let l = g.request_labels("limit=5");
        assert_eq!(
            (l.category.as_str(), l.brand.as_str(), l.size.as_str()),
            ("none", "none", "none")
        );
    }

    #[test]
    fn hostile_queries_give_a_bounded_set_of_label_values() {
        let g = guard();
        let distinct: std::collections::HashSet<String> = (0..10_000)
            .map(|i| g.request_labels(&format!("category=c{i}&brand=b{i}")))
            .map(|l| format!("{}/{}/{}", l.category, l.brand, l.size))
            .collect();
        assert_eq!(distinct.len(), 1);
    }

    #[test]
    fn client_classes_by_longest_prefix() {
        let g = guard();
        assert_eq!(g.client_class(Some("dev-local")), "internal");
        assert_eq!(g.client_class(Some("partner-gold-7")), "gold");
        assert_eq!(g.client_class(Some("partner-2")), "partner");
        assert_eq!(g.client_class(Some("someone")), "authenticated");
        assert_eq!(g.client_class(None), "anonymous");
    }

    #[test]
    fn status_and_cache_are_bounded() {
        assert_eq!(status_class(Some("204")), "2xx");
        assert_eq!(status_class(Some("429")), "4xx");
        assert_eq!(status_class(Some("abc")), "other");
        assert_eq!(cache_result(Some("HIT")), "HIT");
        assert_eq!(cache_result(Some("weird")), "other");
        assert_eq!(cache_result(None), "none");
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = Guard::parse(br#"{"categories":["ok","bad value"]}"#).unwrap_err();
        assert!(err.starts_with("config.categories[1]"), "{err}");
        let err = Guard::parse(br#"{"metric_prefix":"shop-"}"#).unwrap_err();
        assert!(err.starts_with("config.metric_prefix"), "{err}");
        assert!(Guard::parse(b"").is_ok());
    }
}
