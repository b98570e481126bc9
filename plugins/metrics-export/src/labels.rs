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

    /// 0 for absent, 1 for a value outside `list`, 2 + its position otherwise.
    fn index(list: &[String], value: Option<&str>) -> u16 {
        match value {
            None | Some("") => 0,
            Some(v) => list
                .iter()
                .position(|a| a == v)
                .map_or(1, |i| u16::try_from(i + 2).unwrap_or(1)),
        }
    }

    fn name(list: &[String], index: u16) -> &str {
        match index {
            0 => "none",
            1 => "other",
            i => list.get(usize::from(i) - 2).map_or("other", String::as_str),
        }
    }

    /// The request-side labels from the query string, as indexes (cheap to hash per request;
    /// [`Guard::category`] and friends give the label values).
    pub fn request_labels(&self, query: &str) -> RequestLabels {
        let get = |name: &str| {
            query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        RequestLabels {
            category: Self::index(&self.categories, get("category")),
            brand: Self::index(&self.brands, get("brand")),
            size: Self::index(&self.sizes, get("size")),
        }
    }

    pub fn category(&self, labels: &RequestLabels) -> &str {
        Self::name(&self.categories, labels.category)
    }

    pub fn brand(&self, labels: &RequestLabels) -> &str {
        Self::name(&self.brands, labels.brand)
    }

    pub fn size(&self, labels: &RequestLabels) -> &str {
        Self::name(&self.sizes, labels.size)
    }

    /// 0 anonymous, 1 authenticated (no class matches), 2 + the class's position.
    pub fn client_class(&self, client_id: Option<&str>) -> u16 {
        match client_id.filter(|c| !c.is_empty()) {
            None => 0,
            Some(id) => self
                .classes
                .iter()
                .position(|(prefix, _)| id.starts_with(prefix.as_str()))
                .map_or(1, |i| u16::try_from(i + 2).unwrap_or(1)),
        }
    }

    pub fn client_class_name(&self, index: u16) -> &str {
        match index {
            0 => "anonymous",
            1 => "authenticated",
            i => self
                .classes
                .get(usize::from(i) - 2)
                .map_or("authenticated", |(_, class)| class.as_str()),
        }
    }
}

/// A request's query labels as allow-list indexes (see [`Guard::request_labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RequestLabels {
    pub category: u16,
    pub brand: u16,
    pub size: u16,
}

/// The label of a [`status_index`]: `1xx`..`5xx`, or `other`.
pub fn status_class_name(index: u16) -> &'static str {
    STATUS_CLASSES
        .get(usize::from(index))
        .copied()
        .unwrap_or("other")
}

const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into the status classes (0: `other`).
pub fn status_index(status: Option<&str>) -> u16 {
    match status.and_then(|s| s.parse::<u16>().ok()) {
        Some(code @ 100..=599) => code / 100,
        _ => 0,
    }
}

/// 0 absent, 1 unknown, 2 + the result's position in the edge's list.
pub fn cache_index(x_cache: Option<&str>) -> u16 {
    match x_cache {
        None => 0,
        Some(v) => CACHE_RESULTS
            .iter()
            .position(|r| r.eq_ignore_ascii_case(v.trim()))
            .map_or(1, |i| u16::try_from(i + 2).unwrap_or(1)),
    }
}

/// The label of a [`cache_index`].
pub fn cache_name(index: u16) -> &'static str {
    match index {
        0 => "none",
        1 => "other",
        i => CACHE_RESULTS
            .get(usize::from(i) - 2)
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

    fn names(g: &Guard, query: &str) -> (String, String, String) {
        let l = g.request_labels(query);
        (g.category(&l).into(), g.brand(&l).into(), g.size(&l).into())
    }

    fn t(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn values_outside_the_allow_list_become_other() {
        let g = guard();
        assert_eq!(
            names(&g, "category=polo&brand=acme&size=XL"),
            t("polo", "acme", "XL")
        );
        assert_eq!(names(&g, "category=tee"), t("tee", "none", "none"));
        assert_eq!(
            names(&g, "category=%3Cscript%3E&brand=x1&size=XXXXL"),
            t("other", "other", "other")
        );
        assert_eq!(names(&g, "limit=5"), t("none", "none", "none"));
    }

    #[test]
    fn hostile_queries_give_a_bounded_set_of_label_values() {
        let g = guard();
        let distinct: std::collections::HashSet<RequestLabels> = (0..10_000)
            .map(|i| g.request_labels(&format!("category=c{i}&brand=b{i}")))
            .collect();
        assert_eq!(distinct.len(), 1);
    }

    #[test]
    fn client_classes_by_longest_prefix() {
        let g = guard();
        let class = |id: Option<&str>| g.client_class_name(g.client_class(id)).to_string();
        assert_eq!(class(Some("dev-local")), "internal");
        assert_eq!(class(Some("partner-gold-7")), "gold");
        assert_eq!(class(Some("partner-2")), "partner");
        assert_eq!(class(Some("someone")), "authenticated");
        assert_eq!(class(None), "anonymous");
    }

    /// `200` -> `2xx`; anything that is not a status -> `other`.
    fn status_class(status: Option<&str>) -> &'static str {
        status_class_name(status_index(status))
    }

    /// The `X-Cache` value, bounded.
    fn cache_result(x_cache: Option<&str>) -> &'static str {
        cache_name(cache_index(x_cache))
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
