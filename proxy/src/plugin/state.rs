//! What a VM's store carries: the plugin's identity, limits and guest allocator, and - moved in
//! for the length of one callback - the request exchange (headers, body, properties, local
//! response) that the host functions read and change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use super::defined_metrics::{PluginStats, Series, StatsError};
use super::shared_data::SharedData;

/// What every VM of one plugin shares.
#[derive(Debug)]
pub struct PluginShared {
    pub name: String,
    pub root_id: String,
    pub config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub allowed_upstreams: Vec<String>,
    pub shared_data: Arc<SharedData>,
    pub stats: Arc<PluginStats>,
    /// Cluster-wide rate limits (`edge.cluster_rate_limit`), when `redis:` is configured.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A response a plugin asked the host to send instead of proxying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// An HTTP callout a plugin dispatched during the current callback.
#[derive(Debug, Clone)]
pub struct CalloutRequest {
    pub token: u32,
    pub upstream: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// A callout's answer, readable during `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Which body the current callback sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Request,
    Response,
}

/// One request as the plugin chain sees it; it lives in the proxy's request context and is
/// moved into the store of whichever VM runs a callback, so all plugins of a chain share it.
#[derive(Debug, Default)]
pub struct Exchange {
    pub request_id: String,
    pub client: Option<SocketAddr>,
    /// The client's TLS connection (`None`: plain HTTP).
    pub tls: Option<Arc<crate::tls::client::ClientTls>>,
    /// Status of the response, once there is one.
    pub response_code: Option<u16>,
    /// Custom properties set by plugins (e.g. the authenticated client id), by their path as
    /// the ABI passes it (segments separated by NUL bytes).
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    /// The plugin asked to resume a paused stream.
    pub resumed: bool,
    /// The body chunk (or whole buffered body) the current body callback sees.
    pub body: Option<(BodyKind, bytes::Bytes)>,
    /// The body as the callback received it, kept aside once a plugin edits it: what goes on if
    /// the callback then fails (so the common, unedited case needs no second reference).
    pub body_before_edit: Option<bytes::Bytes>,
}

/// The store data of one VM.
pub struct HostState {
    pub plugin: Arc<PluginShared>,
    pub memory: Option<Memory>,
    pub allocator: Option<TypedFunc<u32, u32>>,
    pub memory_cap: usize,
    /// The cap refused a `memory.grow`: the fault is a memory blow-up.
    pub memory_denied: bool,
    /// Boxed so moving it in and out of a store per callback is a pointer swap.
    pub exchange: Box<Exchange>,
    /// The request and response headers, swapped in from the session for a callback; the
    /// `*_live` flags say whether they are real for this callback.
    pub request_headers: RequestHeader,
    pub request_live: bool,
    pub response_headers: ResponseHeader,
    pub response_live: bool,
    pub callout_response: Option<CalloutResponse>,
    pub callouts: Vec<CalloutRequest>,
    pub next_callout_token: u32,
    /// The root context's tick period (shared with the VM's slot, which the ticker reads).
    pub tick_period_ms: Arc<AtomicU32>,
    pub effective_context: u32,
    /// The plugin's metric series this VM used, by id (resolved once from the shared registry).
    pub series: Vec<Option<Series>>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub fn new(
        plugin: Arc<PluginShared>,
        memory_cap: usize,
        tick_period_ms: Arc<AtomicU32>,
    ) -> Self {
        Self {
            plugin,
            memory: None,
            allocator: None,
            memory_cap,
            memory_denied: false,
            exchange: Box::default(),
            request_headers: placeholder_request(),
            request_live: false,
            response_headers: placeholder_response(),
            response_live: false,
            callout_response: None,
            callouts: Vec::new(),
            next_callout_token: 1,
            tick_period_ms,
            effective_context: 0,
            series: Vec::new(),
        }
    }
}

impl HostState {
    /// Metric series `id`: from this VM's cache, else resolved (and kept) once.
    pub fn series(&mut self, id: u32) -> Result<&Series, StatsError> {
        let slot = id as usize;
        if self.series.get(slot).is_none_or(Option::is_none) {
            let series = self.plugin.stats.series(id)?;
            if self.series.len() <= slot {
                self.series.resize(slot + 1, None);
            }
            self.series[slot] = Some(series);
        }
        self.series[slot].as_ref().ok_or(StatsError::NotFound(id))
    }
}

/// An empty request header (what the session holds while the real one is in a store).
fn placeholder_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

fn placeholder_response() -> ResponseHeader {
    ResponseHeader::from(http::Response::new(()).into_parts().0)
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
            return Err(wasmtime::Error::msg(format!(
                "plugin `{}` asked for {desired} bytes of memory; its cap is {}",
                self.plugin.name, self.memory_cap
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
