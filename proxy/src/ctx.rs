//! Per-request state carried through the Pingora phases.

use std::sync::Arc;
use std::time::Instant;

use crate::generation::Generation;
use crate::plugin::chain::Chain;
use crate::plugin::state::LocalResponse;
use crate::routing::Route;

#[derive(Debug)]
pub struct RequestCtx {
    /// The configuration generation the request started on, kept to its end.
    pub generation: Arc<Generation>,
    pub request_id: String,
    pub started: Instant,
    pub route: Option<Arc<Route>>,
    /// Whether the upstream connection came from the pool (set once connected).
    pub reused: Option<bool>,
    /// The `X-Cache` value sent (HIT, MISS, STALE, EXPIRED, REVALIDATED, BYPASS).
    pub cache_result: &'static str,
    /// The route's plugins for this request (`None` when the route has none).
    pub chain: Option<Chain>,
    /// A plugin's local response from a response phase: its body replaces the upstream's.
    pub replacement_body: Option<bytes::Bytes>,
    /// The answer for a plugin failure in a body phase (sent if no head went out yet).
    pub plugin_failure: Option<LocalResponse>,
    /// When the request went upstream (the start of the upstream's response deadline).
    pub upstream_sent: Option<Instant>,
    /// Why the request's framing was refused (sent by `fail_to_proxy`).
    pub refusal: Option<crate::framing::Refusal>,
}

impl RequestCtx {
    pub fn new(generation: Arc<Generation>) -> Self {
        Self {
            generation,
            request_id: String::new(),
            started: Instant::now(),
            route: None,
            reused: None,
            cache_result: "BYPASS",
            chain: None,
            replacement_body: None,
            plugin_failure: None,
            refusal: None,
            upstream_sent: None,
        }
    }

    pub fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.name.as_str())
    }
}
