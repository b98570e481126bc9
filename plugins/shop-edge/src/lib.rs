//! The shop's edge in one plugin (proxy-wasm, `wasm32-wasip1`): the `auth`, `rate-limit` and
//! `metrics-export` plugins' filter steps run by one HTTP context, each switched on by its
//! config section (`auth`, `rate_limit`, `metrics`, with the same schema as the plugin's own
//! config). It behaves as the three chained in that order, with the work they repeated done
//! once: one context and one set of callbacks instead of three, the request target read once,
//! the client id handed from auth to the others directly (still published as the
//! `auth.client_id` property for other plugins), one clock read for both.

pub mod config;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use plugin_support::ConfiguredPlugin;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use auth::filter::Checked;
use metrics_export::filter::{Answered, Seen};
use rate_limit::filter::{Limited, Quota, RateLimiter};

use crate::config::{Parts, Settings};

proxy_wasm::main! {{
    plugin_support::register::<ShopEdge>();
}}

impl ConfiguredPlugin for ShopEdge {
    const NAME: &'static str = "shop-edge";
    type Settings = Settings;
    /// One set of parts per VM (their caches and series registry are the VM's).
    type State = Rc<Parts>;

    fn parse(bytes: &[u8]) -> Result<Settings, String> {
        Settings::parse(bytes)
    }

    fn build(settings: Rc<Settings>) -> Rc<Parts> {
        Rc::new(Parts::new(&settings))
    }

    fn context(parts: &Rc<Parts>) -> Box<dyn HttpContext> {
        Box::new(ShopEdge {
            parts: parts.clone(),
            quota: None,
            seen: None,
            answered: Answered::default(),
        })
    }
}

struct ShopEdge {
    parts: Rc<Parts>,
    quota: Option<Quota>,
    seen: Option<Seen>,
    answered: Answered,
}

impl Context for ShopEdge {}

impl HttpContext for ShopEdge {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let parts = &*self.parts;
        let target = hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten()
            .unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let client_id = match &parts.auth {
            Some(auth) => match auth.on_request_headers(path) {
                Checked::Denied => return Action::Pause,
                Checked::Allowed(client) => Some(client),
                Checked::Public => None,
            },
            None if parts.limiter.is_some() || parts.recorder.is_some() => {
                plugin_support::published_client_id().map(Rc::from)
            }
            None => None,
        };
        let now = hostcalls::get_current_time().unwrap_or(UNIX_EPOCH);
        if let Some(limiter) = &parts.limiter {
            if let Some(rule) = limiter.settings.rule_for(path, query) {
                let now_ns = now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                match limiter.on_request_headers(rule, client_id.as_deref(), now_ns) {
                    Limited::Unlimited => {}
                    Limited::Allowed(quota) => self.quota = Some(quota),
                    // As in the chain, metrics never see a refused request.
                    Limited::Refused => return Action::Pause,
                }
            }
        }
        if let Some(recorder) = &parts.recorder {
            self.seen = Some(recorder.start(query, client_id.as_deref(), now));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.seen.is_some() {
            self.answered = metrics_export::filter::Recorder::answered();
        }
        if let Some(quota) = self.quota {
            RateLimiter::on_response_headers(quota);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let (Some(recorder), Some(seen)) = (&self.parts.recorder, self.seen.take()) {
            recorder.log(seen, self.answered);
        }
    }
}
