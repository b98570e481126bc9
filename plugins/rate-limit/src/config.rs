//! The limiter's configuration: an ordered list of rules (the first that matches a request
//! applies), each a path prefix, optional required query values (e.g. `category: polo`), a rate
//! and a burst. Checked in `on_configure`; errors name the key path.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::bucket::Limit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Shared-data key prefix of the buckets; give it a TTL in `plugin_host.shared_data.ttl_by_prefix`
    /// (at least the longest `burst / rate_per_second`) so idle buckets expire.
    #[serde(default = "default_prefix")]
    key_prefix: String,
    /// Compare-and-swap attempts before a request is let through unlimited (and logged).
    #[serde(default = "default_retries")]
    max_cas_retries: u32,
    /// A header carrying the client's address, set by a front proxy the operator trusts
    /// (e.g. `x-real-ip`); unset: the connection's source address.
    #[serde(default)]
    client_address_header: Option<String>,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default = "default_path")]
    path_prefix: String,
    /// Query parameters that must have these values for the rule to apply.
    #[serde(default)]
    query: BTreeMap<String, String>,
    rate_per_second: f64,
    burst: u64,
    /// `local` (this instance's shared data) or `cluster` (every instance sharing the host's
    /// Redis: the host's `edge.cluster_rate_limit`; local where the host lacks it).
    #[serde(default)]
    scope: Scope,
}

/// Where a rule's buckets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Cluster,
}

fn default_prefix() -> String {
    "ratelimit/".into()
}
fn default_retries() -> u32 {
    32
}
fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub path_prefix: String,
    pub query: Vec<(String, String)>,
    pub limit: Limit,
    pub rate_per_second: f64,
    pub scope: Scope,
}

impl Rule {
    /// Whether the rule applies to `path` with this query string (pairs matched as sent, not
    /// percent-decoded; nothing is allocated).
    pub fn matches(&self, path: &str, query: &str) -> bool {
        path.starts_with(self.path_prefix.as_str())
            && self
                .query
                .iter()
                .all(|(k, v)| query_pairs(query).any(|(qk, qv)| qk == k && qv == v))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub key_prefix: String,
    pub max_cas_retries: u32,
    /// Header naming the client address when no verified client id is known (trusted front).
    pub client_address_header: Option<String>,
    pub rules: Vec<Rule>,
}

impl Settings {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("config: {e}"))?;
        if raw.rules.is_empty() {
            return Err("config.rules: at least one rule is needed".into());
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, rule) in raw.rules.into_iter().enumerate() {
            let at = format!("config.rules[{i}]");
            if rule.name.is_empty() || rule.name.contains('/') {
                return Err(format!("{at}.name: must be non-empty and without `/`"));
            }
            if rules.iter().any(|r: &Rule| r.name == rule.name) {
                return Err(format!("{at}.name: `{}` is used twice", rule.name));
            }
            if !rule.path_prefix.starts_with('/') {
                return Err(format!("{at}.path_prefix: must start with `/`"));
            }
            let limit = Limit::new(rule.rate_per_second, rule.burst).ok_or_else(|| {
                format!(
                    "{at}: rate_per_second must be > 0 (and at least 1 per 30 years) and burst >= 1 (got {} and {})",
                    rule.rate_per_second, rule.burst
                )
            })?;
            rules.push(Rule {
                name: rule.name,
                path_prefix: rule.path_prefix,
                query: rule.query.into_iter().collect(),
                limit,
                rate_per_second: rule.rate_per_second,
                scope: rule.scope,
            });
        }
        Ok(Self {
            key_prefix: raw.key_prefix,
            max_cas_retries: raw.max_cas_retries.max(1),
            client_address_header: raw
                .client_address_header
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
            rules,
        })
    }

    /// The first rule for the request (`query`: the target's query string, without `?`).
    pub fn rule_for(&self, path: &str, query: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(path, query))
    }
}

/// `a=1&b=2` -> pairs (no percent-decoding: rule values are matched as sent).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_applies() {
        let s = Settings::parse(
            br#"{"rules":[
                {"name":"polo","path_prefix":"/api/v1/products","query":{"category":"polo"},"rate_per_second":1,"burst":2},
                {"name":"api","path_prefix":"/api/","rate_per_second":10,"burst":20}]}"#,
        )
        .unwrap();
        let polo = s.rule_for("/api/v1/products", "limit=5&category=polo");
        assert_eq!(polo.unwrap().name, "polo");
        let tee = s.rule_for("/api/v1/products", "category=tee");
        assert_eq!(tee.unwrap().name, "api");
        assert!(s.rule_for("/healthz", "").is_none());
    }

    #[test]
    fn rules_are_local_unless_said_cluster() {
        let s = Settings::parse(
            br#"{"rules":[
                {"name":"a","path_prefix":"/a","rate_per_second":1,"burst":2},
                {"name":"b","path_prefix":"/b","rate_per_second":1,"burst":2,"scope":"cluster"}]}"#,
        )
        .unwrap();
        assert_eq!(s.rules[0].scope, Scope::Local);
        assert_eq!(s.rules[1].scope, Scope::Cluster);
        assert!(Settings::parse(
            br#"{"rules":[{"name":"a","rate_per_second":1,"burst":2,"scope":"global"}]}"#
        )
        .unwrap_err()
        .contains("expected `local` or `cluster`"));
    }

    #[test]
    fn errors_name_the_rule() {
        let err = Settings::parse(br#"{"rules":[{"name":"a","rate_per_second":0,"burst":1}]}"#)
            .unwrap_err();
        assert!(err.starts_with("config.rules[0]"), "{err}");
        let err = Settings::parse(
            br#"{"rules":[{"name":"a","rate_per_second":1,"burst":1},{"name":"a","rate_per_second":1,"burst":1}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("config.rules[1].name"), "{err}");
        assert!(Settings::parse(br#"{"rules":[]}"#).is_err());
        assert!(Settings::parse(br#"{"rulez":[]}"#)
            .unwrap_err()
            .contains("rulez"));
    }
}
