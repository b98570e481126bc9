//! A route's plugin chain for one request: the VM of each plugin the request is pinned to, its
//! HTTP context there, and the request's [`Exchange`] (moved into each VM's store for the length
//! of a callback, so plugins of a chain share properties). The proxy's phases drive it, in
//! Envoy's order: request callbacks in the route's order, response callbacks in the reverse
//! order; a local response (a plugin's, or the 503 of a `closed` plugin that failed) goes back
//! through the response callbacks of the plugins before the one that answered.
//!
//! - `headers`: the header phases and the callouts a plugin pauses on;
//! - `body`: body streaming and buffering;
//! - `entry`: entering a VM for a callback (contexts created, or re-created after a rebuild);
//! - `failure`: the failure policy and the answers the host sends for plugins;
//! - `finish`: the end of the request (`on_done`, `on_log`, late callouts, `on_delete`).

mod body;
mod entry;
mod failure;
mod finish;
mod headers;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::callout::Callouts;
use super::host::RunningPlugin;
use super::state::{CalloutRequest, Exchange, LocalResponse};
use crate::tls::client::ClientTls;

pub use body::BodyStep;
pub use failure::CallError;
pub use finish::Leftovers;

/// The host's plugin list, which every phase passes in (the chain holds indexes into it, so a
/// request touches no shared reference count).
pub type PluginList<'a> = &'a [Arc<RunningPlugin>];

/// How a phase ended for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Answer with this response (a plugin's local response, or 503 for a failed plugin).
    Respond(LocalResponse),
}

#[derive(Debug)]
struct Link {
    /// The plugin's index in the host's plugin list.
    plugin: usize,
    slot: usize,
    /// The VM generation and context id the request has there, once created.
    context: Option<(u64, u32)>,
    /// Skipped for the rest of the request (failed, `open` mode).
    skipped: bool,
    /// `on_request_headers` ran, with this end-of-stream flag (re-run after a VM rebuild).
    request_headers_ended: Option<bool>,
    /// The body this plugin is buffering (it paused before end of stream), per direction.
    request_buffer: Option<Vec<u8>>,
    response_buffer: Option<Vec<u8>>,
    /// Callouts dispatched where nothing could wait for them, run after the response.
    later_callouts: Vec<CalloutRequest>,
}

/// The plugin state of one request.
#[derive(Debug)]
pub struct Chain {
    links: Vec<Link>,
    pub exchange: Box<Exchange>,
    /// A plugin paused in `on_response_headers` (Envoy: stop iteration until the body is
    /// seen); the proxy then sends the response without a Content-Length (chunked), since the
    /// body may change length.
    pub response_headers_held: bool,
    /// The link that answered the request locally: only the links before it see the response.
    answered: Option<usize>,
    request_body: body::BodyProgress,
    response_body: body::BodyProgress,
}

impl Chain {
    /// The chain of `route` (indexes into `plugins`).
    pub fn new(
        plugins: PluginList<'_>,
        route: &[usize],
        request_id: String,
        client: Option<SocketAddr>,
        tls: Option<Arc<ClientTls>>,
    ) -> Self {
        let links = route
            .iter()
            .filter_map(|&index| Some((index, plugins.get(index)?)))
            .map(|(index, plugin)| Link {
                slot: plugin.pick_slot(),
                plugin: index,
                context: None,
                skipped: false,
                request_headers_ended: None,
                request_buffer: None,
                response_buffer: None,
                later_callouts: Vec::new(),
            })
            .collect();
        Self {
            links,
            exchange: Box::new(Exchange {
                request_id,
                client,
                tls,
                ..Exchange::default()
            }),
            response_headers_held: false,
            answered: None,
            request_body: body::BodyProgress::default(),
            response_body: body::BodyProgress::default(),
        }
    }

    /// Link `index` answered the request (on its request side).
    fn answered_by(&mut self, index: usize) {
        self.answered = Some(index);
    }

    /// How many links a phase visits: all on the request side; on the response side, those
    /// before the one that answered locally, if one did.
    fn span(&self, response_side: bool) -> usize {
        match self.answered {
            Some(index) if response_side => index,
            _ => self.links.len(),
        }
    }

    /// The link at `step` of a phase: the route's order on the request side, the reverse on
    /// the response side (Envoy's encoder order).
    fn link_at(&self, response_side: bool, step: usize) -> usize {
        if response_side {
            self.span(true) - 1 - step
        } else {
            step
        }
    }

    /// A local response's way back: the response header and body callbacks of the plugins
    /// before the one that answered (in response order), as Envoy runs them. `Ok` is the body
    /// to send (`header` edited in place); `Err` a plugin's own answer that replaces it.
    pub async fn local_answer(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        header: &mut ResponseHeader,
        body: Bytes,
        callouts: &Callouts,
    ) -> Result<Bytes, LocalResponse> {
        if let Outcome::Respond(local) = self
            .response_headers(plugins, request, header, callouts)
            .await
        {
            return Err(local);
        }
        match self.response_body(plugins, request, Some(body), true)? {
            BodyStep::Forward(bytes) => Ok(bytes),
            BodyStep::Hold => Ok(Bytes::new()),
        }
    }
}
