//! Per-request state carried through the Pingora phases.

use std::sync::Arc;
use std::time::Instant;

use crate::generation::Generation;
use crate::plugin::chain::Chain;
use crate::plugin::state::LocalResponse;
use crate::routing::{CachePolicy, Route};

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
    /// The client's TLS connection (`None`: plain HTTP).
    pub tls: Option<Arc<crate::tls::client::ClientTls>>,
    /// A cached body's latest chunk, held back over HTTP/2 until its end is known.
    pub held_tail: crate::cache::tail::HeldTail,
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
            tls: None,
            held_tail: Default::default(),
        }
    }

    pub fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| r.name.as_str())
    }

    /// The route's cache policy, when it caches.
    pub fn cache_policy(&self) -> Option<&CachePolicy> {
        self.route.as_ref().and_then(|r| r.cache.as_ref())
    }

    /// An upstream answer still arriving after its `response_timeout`: a read timeout (504 if
    /// no head was sent, else the response is aborted).
    pub fn response_deadline(&self) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        let (Some(sent), Some(route)) = (self.upstream_sent, self.route.as_ref()) else {
            return Ok(());
        };
        let limit = route.upstream.settings.response_timeout;
        if sent.elapsed() <= limit {
            return Ok(());
        }
        let mut error = Error::explain(
            ErrorType::ReadTimedout,
            format!("upstream response exceeded response_timeout ({limit:?})"),
        );
        error.as_up();
        Err(error)
    }
}
