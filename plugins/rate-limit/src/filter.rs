//! The rate-limit step of a request over the host ABI: find the rule, name the bucket, take a
//! token with compare-and-swap, answer 429 when none is left, and put the `RateLimit-*` values
//! on the response. This plugin's HTTP context runs it, and so does any plugin composing it
//! (`shop-edge`, which hands it the client id directly instead of through a property).
//!
//! A bucket that does not exist yet is created with [`CREATE_ONLY`], so VMs racing on a
//! client's first request cannot overwrite each other's buckets: every token taken is counted.

use std::rc::Rc;

use plugin_support::{decimal, CREATE_ONLY};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, Status};

use crate::bucket::{self, Limit, Verdict};
use crate::client_key::push_client_key;
use crate::config::{Rule, Scope, Settings};

/// The `RateLimit-*` values for the response of an allowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: u64,
}

/// How the step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The store could not be used: not limited.
    Unlimited,
    Allowed(Quota),
    /// A 429 was sent: the request stops here.
    Refused,
}

/// One VM's limiter.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pub settings: Rc<Settings>,
}

impl RateLimiter {
    pub fn new(settings: Rc<Settings>) -> Self {
        Self { settings }
    }

    /// The step for a request `rule` applies to (`settings.rule_for` found it: callers look it
    /// up first, to skip reading the client and the clock when none applies), at `now_ns`;
    /// `client_id` is the verified client, if any (else the client's address names the bucket).
    pub fn on_request_headers(&self, rule: &Rule, client_id: Option<&str>, now_ns: u64) -> Limited {
        let settings = &*self.settings;
        // Only a verified client id, or the client's address, names a bucket: an unverified
        // `x-api-key` (a public path) would let every random key start a fresh burst.
        let trusted = match (client_id, &settings.client_address_header) {
            (None, Some(header)) => hostcalls::get_map_value(MapType::HttpRequestHeaders, header)
                .ok()
                .flatten(),
            _ => None,
        };
        let source = match (client_id, &trusted) {
            (None, None) => hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok()),
            _ => None,
        };
        let mut key = String::with_capacity(
            settings.key_prefix.len() + rule.name.len() + 8 + client_id.map_or(40, str::len),
        );
        key.push_str(&settings.key_prefix);
        key.push_str(&rule.name);
        key.push('/');
        push_client_key(&mut key, client_id, trusted.as_deref(), source.as_deref());
        let verdict = match rule.scope {
            Scope::Cluster => {
                cluster_take(&key, rule).or_else(|| self.take(&key, rule.limit, now_ns))
            }
            Scope::Local => self.take(&key, rule.limit, now_ns),
        };
        let Some(verdict) = verdict else {
            return Limited::Unlimited;
        };
        if verdict.allowed {
            return Limited::Allowed(Quota {
                limit: rule.limit.burst,
                remaining: verdict.remaining,
                reset_seconds: verdict.reset_seconds,
            });
        }
        refuse(&rule.name, rule.limit.burst, &verdict);
        Limited::Refused
    }

    /// Takes a token from `key`'s bucket with CAS retries; `None` when the store kept refusing
    /// (the request then goes through unlimited).
    fn take(&self, key: &str, limit: Limit, now_ns: u64) -> Option<Verdict> {
        for _ in 0..self.settings.max_cas_retries {
            let (stored, cas) = match hostcalls::get_shared_data(key) {
                Ok(found) => found,
                Err(status) => {
                    log::warn!("rate-limit: shared data read failed ({status:?}); not limiting");
                    return None;
                }
            };
            let tat = stored.as_deref().and_then(bucket::decode);
            let verdict = bucket::take(limit, tat, now_ns);
            if !verdict.allowed {
                return Some(verdict);
            }
            let token = cas.or(CREATE_ONLY);
            match hostcalls::set_shared_data(key, Some(&bucket::encode(verdict.tat_ns)), token) {
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

    /// The `RateLimit-*` response headers of an allowed request.
    pub fn on_response_headers(quota: Quota) {
        let mut buffer = [0; 20];
        for (name, value) in [
            ("ratelimit-limit", quota.limit),
            ("ratelimit-remaining", quota.remaining),
            ("ratelimit-reset", quota.reset_seconds),
        ] {
            let value = decimal(value, &mut buffer);
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
    }
}

/// The host's cluster-wide bucket (`edge.cluster_rate_limit`, answered from its memory);
/// `None` where the host does not offer it (another host, or no `redis:`): the rule then
/// runs on this instance's shared data, said once per VM in the log.
fn cluster_take(key: &str, rule: &Rule) -> Option<Verdict> {
    let mut args = Vec::with_capacity(16 + key.len());
    args.extend_from_slice(&rule.rate_per_second.to_le_bytes());
    args.extend_from_slice(&rule.limit.burst.to_le_bytes());
    args.extend_from_slice(key.as_bytes());
    match hostcalls::call_foreign_function(CLUSTER_RATE_LIMIT, Some(&args)) {
        Ok(Some(answer)) if answer.len() == 25 => {
            let word = |i: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&answer[1 + 8 * i..9 + 8 * i]);
                u64::from_le_bytes(bytes)
            };
            Some(Verdict {
                allowed: answer[0] == 1,
                tat_ns: 0,
                remaining: word(0),
                reset_seconds: word(1),
                retry_after_seconds: word(2).max(u64::from(answer[0] != 1)),
            })
        }
        other => {
            CLUSTER_MISSING_LOGGED.with(|logged| {
                if !logged.replace(true) {
                    log::warn!(
                        "rate-limit: rule `{}` has scope cluster but the host answered {other:?} to {CLUSTER_RATE_LIMIT}; enforcing it on this instance only",
                        rule.name
                    );
                }
            });
            None
        }
    }
}

/// The host function behind `scope: cluster`.
const CLUSTER_RATE_LIMIT: &str = "edge.cluster_rate_limit";

thread_local! {
    static CLUSTER_MISSING_LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The 429 (the cold path: formatting is fine here).
fn refuse(rule: &str, limit: u64, verdict: &Verdict) {
    let (limit, reset, retry) = (
        limit.to_string(),
        verdict.reset_seconds.to_string(),
        verdict.retry_after_seconds.to_string(),
    );
    let body = serde_json::json!({"error": {
        "code": "rate_limited",
        "message": format!("rate limit `{rule}` exceeded: retry in {retry} s"),
    }})
    .to_string();
    let _ = hostcalls::send_http_response(
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
}
