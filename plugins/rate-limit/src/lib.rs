//! Rate-limit filter (proxy-wasm, `wasm32-wasip1`): token buckets ([`bucket`]) keyed by client
//! ([`client_key`]) per rule ([`config`]), kept in host shared data and updated with
//! compare-and-swap, so every VM on every worker draws from the same bucket. A refused request
//! gets a 429 with `Retry-After`; refused and allowed responses carry `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`.
//!
//! A bucket that does not exist yet is created with [`CREATE_ONLY`], so VMs racing on a client's
//! first request cannot overwrite each other's buckets: every token taken is counted.

pub mod bucket;
pub mod client_key;
pub mod config;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use plugin_support::{ConfiguredRoot, CREATE_ONLY};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel, Status};

use crate::bucket::{Limit, Verdict};
use crate::config::{query_pairs, Settings};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ConfiguredRoot::new(
            "rate-limit",
            Settings::parse,
            Box::new(|settings| Box::new(Limiter { settings, headers: None })),
        ))
    });
}}

struct Limiter {
    settings: Rc<Settings>,
    /// The RateLimit-* values for the response, when a rule applied.
    headers: Option<(u64, u64, u64)>,
}

impl Limiter {
    /// Takes a token from `key`'s bucket with CAS retries; `None` when the store kept refusing
    /// (the request then goes through unlimited).
    fn take(&self, key: &str, limit: Limit, now_ns: u64) -> Option<Verdict> {
        for _ in 0..self.settings.max_cas_retries {
            let (stored, cas) = self.get_shared_data(key);
            let tat = stored.as_deref().and_then(bucket::decode);
            let verdict = bucket::take(limit, tat, now_ns);
            if !verdict.allowed {
                return Some(verdict);
            }
            let token = cas.or(CREATE_ONLY);
            match self.set_shared_data(key, Some(&bucket::encode(verdict.tat_ns)), token) {
                Ok(()) => return Some(verdict),
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    log::warn!("rate-limit: shared data write failed ({status:?}); not limiting");
                    return None;
                }
            }
        }
        log::warn!("rate-limit: bucket `{key}` stayed contended; not limiting this request");
        None
    }
}

impl Context for Limiter {}

impl HttpContext for Limiter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let target = self.get_http_request_header(":path").unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let pairs = query_pairs(query);
        let settings = self.settings.clone();
        let Some(rule) = settings.rule_for(path, &pairs) else {
            return Action::Continue;
        };
        // Each lookup is a host call that copies into this VM: ask only for what decides.
        let client_id = self
            .get_property(vec!["auth", "client_id"])
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|id| !id.is_empty());
        // Only a verified client id, or the client's address, names a bucket: an unverified
        // `x-api-key` (a public path) would let every random key start a fresh burst.
        let trusted = match (&client_id, &settings.client_address_header) {
            (None, Some(header)) => self.get_http_request_header(header),
            _ => None,
        };
        let source = match (&client_id, &trusted) {
            (None, None) => self
                .get_property(vec!["source", "address"])
                .and_then(|b| String::from_utf8(b).ok()),
            _ => None,
        };
        let who =
            client_key::client_key(client_id.as_deref(), trusted.as_deref(), source.as_deref());
        let key = format!("{}{}/{}", settings.key_prefix, rule.name, who);
        let now_ns = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let Some(verdict) = self.take(&key, rule.limit, now_ns) else {
            return Action::Continue;
        };
        let limit = rule.limit.burst;
        if verdict.allowed {
            self.headers = Some((limit, verdict.remaining, verdict.reset_seconds));
            return Action::Continue;
        }
        let (limit, reset, retry) = (
            limit.to_string(),
            verdict.reset_seconds.to_string(),
            verdict.retry_after_seconds.to_string(),
        );
        let body = serde_json::json!({"error": {
            "code": "rate_limited",
            "message": format!("rate limit `{}` exceeded: retry in {retry} s", rule.name),
        }})
        .to_string();
        self.send_http_response(
            429,
            vec![
                ("retry-after", retry.as_str()),
                ("ratelimit-limit", limit.as_str()),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", reset.as_str()),
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some((limit, remaining, reset)) = self.headers {
            self.set_http_response_header("ratelimit-limit", Some(&limit.to_string()));
            self.set_http_response_header("ratelimit-remaining", Some(&remaining.to_string()));
            self.set_http_response_header("ratelimit-reset", Some(&reset.to_string()));
        }
        Action::Continue
    }
}
