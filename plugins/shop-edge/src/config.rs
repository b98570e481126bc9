//! The configuration: one optional section per part, each with the schema of the plugin it
//! comes from (`auth`, `rate_limit`, `metrics` = metrics-export), checked by that plugin's own
//! checker; errors name the section (`config.rate_limit.rules[0]...`). No section is an error:
//! the plugin would do nothing.

use std::rc::Rc;

use auth::filter::Authenticator;
use metrics_export::filter::Recorder;
use metrics_export::labels::Guard;
use rate_limit::filter::RateLimiter;
use serde_json::{Map, Value};

/// The checked sections.
#[derive(Debug, Default)]
pub struct Settings {
    pub auth: Option<Rc<auth::config::Settings>>,
    pub rate_limit: Option<Rc<rate_limit::config::Settings>>,
    pub metrics: Option<Rc<Guard>>,
}

const SECTIONS: [&str; 3] = ["auth", "rate_limit", "metrics"];

/// Checks `section` of `config` with `parse`, its errors re-rooted under the section.
fn section<S>(
    config: &Map<String, Value>,
    name: &str,
    parse: fn(&[u8]) -> Result<S, String>,
) -> Result<Option<Rc<S>>, String> {
    let Some(value) = config.get(name) else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(value).map_err(|e| format!("config.{name}: {e}"))?;
    parse(&bytes)
        .map(|s| Some(Rc::new(s)))
        .map_err(|e| match e.strip_prefix("config") {
            Some(rest) => format!("config.{name}{rest}"),
            None => format!("config.{name}: {e}"),
        })
}

impl Settings {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("config: {e}"))?;
        let Value::Object(config) = value else {
            return Err(
                "config: expected a mapping with `auth`, `rate_limit` and/or `metrics`".into(),
            );
        };
        if let Some(unknown) = config.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(format!(
                "config.{unknown}: unknown section (expected `auth`, `rate_limit` or `metrics`)"
            ));
        }
        let settings = Self {
            auth: section(&config, "auth", auth::config::Settings::parse)?,
            rate_limit: section(&config, "rate_limit", rate_limit::config::Settings::parse)?,
            metrics: section(&config, "metrics", Guard::parse)?,
        };
        if settings.auth.is_none() && settings.rate_limit.is_none() && settings.metrics.is_none() {
            return Err("config: no section: give `auth`, `rate_limit` and/or `metrics`".into());
        }
        Ok(settings)
    }
}

/// A VM's parts, each present when its section is.
#[derive(Debug, Default)]
pub struct Parts {
    pub auth: Option<Authenticator>,
    pub limiter: Option<RateLimiter>,
    pub recorder: Option<Recorder>,
}

impl Parts {
    pub fn new(settings: &Settings) -> Self {
        Self {
            auth: settings.auth.clone().map(Authenticator::new),
            limiter: settings.rate_limit.clone().map(RateLimiter::new),
            recorder: settings.metrics.clone().map(Recorder::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_switch_parts_on_and_errors_name_the_section() {
        let all = Settings::parse(
            br#"{"auth":{"protected_prefixes":["/api/"],"api_keys":[{"client_id":"c","key":"k"}]},
                 "rate_limit":{"rules":[{"name":"api","rate_per_second":1,"burst":1}]},
                 "metrics":{"categories":["polo"]}}"#,
        )
        .unwrap();
        let parts = Parts::new(&all);
        assert!(parts.auth.is_some() && parts.limiter.is_some() && parts.recorder.is_some());
        let only_metrics = Parts::new(&Settings::parse(br#"{"metrics":{}}"#).unwrap());
        assert!(only_metrics.auth.is_none() && only_metrics.limiter.is_none());
        let err = Settings::parse(
            br#"{"rate_limit":{"rules":[{"name":"a","rate_per_second":0,"burst":1}]}}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("config.rate_limit.rules[0]"), "{err}");
        let err = Settings::parse(br#"{"metrics":{"categories":["bad value"]}}"#).unwrap_err();
        assert!(err.starts_with("config.metrics.categories[0]"), "{err}");
        assert!(Settings::parse(br#"{"autth":{}}"#)
            .unwrap_err()
            .contains("config.autth"));
        assert!(Settings::parse(b"{}").is_err());
        assert!(Settings::parse(b"").is_err());
    }
}
