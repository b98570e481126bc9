//! Rate-limit filter (proxy-wasm, `wasm32-wasip1`): token buckets ([`bucket`]) keyed by client
//! ([`client_key`]) per rule ([`config`]), kept in host shared data and updated with
//! compare-and-swap, so every VM on every worker draws from the same bucket. A refused request
//! gets a 429 with `Retry-After`; refused and allowed responses carry `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`. The step itself is [`filter`].

pub mod bucket;
pub mod client_key;
pub mod config;
pub mod filter;

/// The plugin itself (off when another plugin composes this crate's [`filter`]).
#[cfg(feature = "filter")]
mod plugin {
    use std::time::UNIX_EPOCH;

    use plugin_support::ConfiguredPlugin;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::Action;

    use crate::config::Settings;
    use crate::filter::{Limited, Quota, RateLimiter};

    proxy_wasm::main! {{
        plugin_support::register::<Limiter>();
    }}

    impl ConfiguredPlugin for Limiter {
        const NAME: &'static str = "rate-limit";
        type Settings = Settings;
        type State = RateLimiter;

        fn parse(bytes: &[u8]) -> Result<Settings, String> {
            Settings::parse(bytes)
        }

        fn build(settings: std::rc::Rc<Settings>) -> RateLimiter {
            RateLimiter::new(settings)
        }

        fn context(limiter: &RateLimiter) -> Box<dyn HttpContext> {
            Box::new(Limiter {
                limiter: limiter.clone(),
                quota: None,
            })
        }
    }

    struct Limiter {
        limiter: RateLimiter,
        /// The RateLimit-* values for the response, when a rule applied.
        quota: Option<Quota>,
    }

    impl Context for Limiter {}

    impl HttpContext for Limiter {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            let target = self.get_http_request_header(":path").unwrap_or_default();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let limiter = self.limiter.clone();
            let Some(rule) = limiter.settings.rule_for(path, query) else {
                return Action::Continue;
            };
            // The client id the auth filter published, if any.
            let client_id = plugin_support::published_client_id();
            let now_ns = self
                .get_current_time()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            match limiter.on_request_headers(rule, client_id.as_deref(), now_ns) {
                Limited::Unlimited => Action::Continue,
                Limited::Allowed(quota) => {
                    self.quota = Some(quota);
                    Action::Continue
                }
                Limited::Refused => Action::Pause,
            }
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if let Some(quota) = self.quota {
                RateLimiter::on_response_headers(quota);
            }
            Action::Continue
        }
    }
}
