//! A route's plugin chain for one request: the VM of each plugin the request is pinned to, its
//! HTTP context there, and the request's [`Exchange`] (moved into each VM's store for the length
//! of a callback, so plugins of a chain share properties). The proxy phases call
//! [`Chain::request_headers`], [`Chain::response_headers`] and [`Chain::finish`]. A fault in a
//! plugin discards its VM (rebuilt on next use) and applies the plugin's failure mode.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::callout::Callouts;
use super::host::{RunningPlugin, VmGuard};
use super::state::{BodyKind, CalloutRequest, Exchange, LocalResponse};
use super::vm::{Action, Vm};
use super::{FailureMode, Fault};

/// How a phase ended for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Answer with this response (a plugin's local response, or 503 for a failed plugin).
    Respond(LocalResponse),
}

#[derive(Debug)]
struct Link {
    /// The plugin's index in the host's plugin list (the chain holds no reference counts: the
    /// phases pass the list in, so a request touches no shared counter).
    plugin: usize,
    slot: usize,
    /// The VM generation and context id the request has there, once created.
    context: Option<(u64, u32)>,
    /// Skipped for the rest of the request (failed, `open` mode).
    skipped: bool,
    /// The body this plugin is buffering (it paused before end of stream), per direction.
    request_buffer: Option<Vec<u8>>,
    response_buffer: Option<Vec<u8>>,
}

/// What the body callbacks decided for the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// Send these bytes on (possibly rewritten, possibly empty).
    Forward(Bytes),
    /// A plugin is buffering: send nothing yet.
    Hold,
}

/// What a header callback left to do.
enum Called {
    /// Nothing: go on, or answer with this local response.
    Done(Option<LocalResponse>),
    /// The plugin paused (with callouts to run, or waiting for a resume).
    Paused(Action, Vec<CalloutRequest>),
}

/// How far one direction's body has been shown to the chain. The end of stream is the chunk
/// that completes the announced `Content-Length` (as Envoy's HTTP/1 codec reports it), or the
/// empty last read of a chunked body, which plugins that saw earlier chunks are then shown.
#[derive(Debug, Default, Clone, Copy)]
struct BodyProgress {
    /// The body's length as announced when it arrives (before any plugin edits its framing).
    announced: Option<u64>,
    received: u64,
    /// Plugins have seen a chunk that was not the end of stream.
    open: bool,
    /// The stream has ended (shown to the plugins, or nothing to show): later reads pass by.
    ended: bool,
}

impl BodyProgress {
    fn new(announced: Option<u64>) -> Self {
        Self {
            announced,
            ..Self::default()
        }
    }

    /// Counts `chunk`; whether it ends the stream (then later reads pass by).
    fn receive(&mut self, chunk: usize, end_of_stream: bool) -> bool {
        self.received = self.received.saturating_add(chunk as u64);
        self.ended = end_of_stream || self.announced.is_some_and(|n| self.received >= n);
        self.ended
    }
}

/// The `Content-Length` in `headers`, when there is a valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::CONTENT_LENGTH)?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// Which headers a callback sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    ResponseHeaders,
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
    request_body: BodyProgress,
    response_body: BodyProgress,
}

/// The 503 a failed `closed` plugin answers with.
fn failed_response(plugin: &str, why: &str) -> LocalResponse {
    let body = serde_json::json!({
        "error": {"code": "plugin_failed", "message": format!("plugin `{plugin}` failed: {why}")}
    });
    LocalResponse {
        status: 503,
        details: format!("plugin_failed:{plugin}"),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: body.to_string().into_bytes(),
    }
}

/// A plugin buffered more of a body than its `limits.max_body_bytes`: 413 for a request body
/// (the client sent too much), 502 for a response body (the upstream's answer cannot be
/// filtered).
fn body_too_large(plugin: &str, kind: BodyKind, limit: usize) -> LocalResponse {
    let (status, code, what) = match kind {
        BodyKind::Request => (413, "body_too_large", "request"),
        BodyKind::Response => (502, "response_too_large", "response"),
    };
    let body = serde_json::json!({
        "error": {"code": code, "message": format!(
            "plugin `{plugin}` buffers the {what} body and it exceeds limits.max_body_bytes ({limit} bytes)"
        )}
    });
    LocalResponse {
        status,
        details: format!("{code}:{plugin}"),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: body.to_string().into_bytes(),
    }
}

/// Why a request's plugin context is gone.
const REBUILT: &str = "its VM was rebuilt while the request was in flight";

/// Locks `plugin`'s VM slot; an error when its VM is no longer the `generation` the request's
/// context was created in.
fn lock_generation(
    plugin: &RunningPlugin,
    slot: usize,
    generation: Option<u64>,
) -> Result<VmGuard<'_>, String> {
    let guard = plugin.lock(slot).map_err(|e| e.to_string())?;
    match generation {
        Some(g) if g != guard.generation => Err(REBUILT.into()),
        _ => Ok(guard),
    }
}

/// Moves the request's exchange and headers into the VM's store for one callback and back.
fn with_exchange<R>(
    vm: &mut Vm,
    exchange: &mut Box<Exchange>,
    request: &mut RequestHeader,
    response: Option<&mut ResponseHeader>,
    call: impl FnOnce(&mut Vm) -> R,
) -> R {
    let state = vm.state_mut();
    std::mem::swap(&mut state.exchange, exchange);
    std::mem::swap(&mut state.request_headers, request);
    state.request_live = true;
    let has_response = response.is_some();
    let mut response = response;
    if let Some(r) = &mut response {
        std::mem::swap(&mut state.response_headers, r);
        state.response_live = true;
    }
    let result = call(vm);
    let state = vm.state_mut();
    std::mem::swap(&mut state.exchange, exchange);
    std::mem::swap(&mut state.request_headers, request);
    state.request_live = false;
    if has_response {
        if let Some(r) = &mut response {
            std::mem::swap(&mut state.response_headers, r);
        }
        state.response_live = false;
    }
    result
}

impl Chain {
    /// The chain of `route` (indexes into `plugins`, the host's list every phase passes in).
    pub fn new(
        plugins: &[Arc<RunningPlugin>],
        route: &[usize],
        request_id: String,
        client: Option<SocketAddr>,
    ) -> Self {
        let links = route
            .iter()
            .filter_map(|&index| Some((index, plugins.get(index)?)))
            .map(|(index, plugin)| Link {
                slot: plugin.pick_slot(),
                plugin: index,
                context: None,
                skipped: false,
                request_buffer: None,
                response_buffer: None,
            })
            .collect();
        Self {
            links,
            exchange: Box::new(Exchange {
                request_id,
                client,
                ..Exchange::default()
            }),
            response_headers_held: false,
            request_body: BodyProgress::default(),
            response_body: BodyProgress::default(),
        }
    }

    /// Runs `on_request_headers` down the chain (before the cache: hits are filtered too).
    pub async fn request_headers(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        request: &mut RequestHeader,
        callouts: &Callouts,
    ) -> Outcome {
        let announced = content_length(&request.headers);
        self.request_body = BodyProgress::new(announced);
        let end_of_stream = !Chain::body_follows(request, announced);
        self.run(
            plugins,
            Phase::RequestHeaders,
            end_of_stream,
            request,
            None,
            callouts,
        )
        .await
    }

    /// Whether the request carries a body (so `on_request_headers` is not the end of stream).
    pub fn has_body(request: &RequestHeader) -> bool {
        Chain::body_follows(request, content_length(&request.headers))
    }

    fn body_follows(request: &RequestHeader, announced: Option<u64>) -> bool {
        announced.is_some_and(|n| n > 0)
            || request
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
    }

    /// Whether `response` to `request` can carry a body at all (not for HEAD, 1xx, 204, 304).
    pub fn response_may_have_body(request: &RequestHeader, response: &ResponseHeader) -> bool {
        request.method != http::Method::HEAD
            && !matches!(response.status.as_u16(), 100..=199 | 204 | 304)
    }

    /// Runs `on_response_headers` down the chain (hits and misses alike).
    pub async fn response_headers(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        request: &mut RequestHeader,
        response: &mut ResponseHeader,
        callouts: &Callouts,
    ) -> Outcome {
        self.exchange.response_code = Some(response.status.as_u16());
        let announced = content_length(&response.headers);
        self.response_body = BodyProgress::new(announced);
        let end_of_stream =
            !Chain::response_may_have_body(request, response) || announced == Some(0);
        self.run(
            plugins,
            Phase::ResponseHeaders,
            end_of_stream,
            request,
            Some(response),
            callouts,
        )
        .await
    }

    async fn run(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        phase: Phase,
        end_of_stream: bool,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        callouts: &Callouts,
    ) -> Outcome {
        for index in 0..self.links.len() {
            if self.links[index].skipped {
                continue;
            }
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                continue;
            };
            let step = match self.call(
                plugin,
                index,
                phase,
                end_of_stream,
                request,
                response.as_deref_mut(),
            ) {
                Ok(Called::Done(local)) => Ok(local),
                Ok(Called::Paused(action, pending)) => {
                    // The rare path, boxed so the common one's future stays small.
                    Box::pin(self.deliver(
                        plugin,
                        index,
                        action,
                        pending,
                        request,
                        response.as_deref_mut(),
                        callouts,
                    ))
                    .await
                }
                Err(fault) => Err(fault),
            };
            match step {
                Ok(None) => {}
                Ok(Some(local)) => return Outcome::Respond(local),
                Err(fault) => {
                    if let Some(local) = self.fail(plugin, index, &fault) {
                        return Outcome::Respond(local);
                    }
                }
            }
        }
        Outcome::Continue
    }

    /// One plugin's callback for `phase` (creating its context on first use).
    fn call(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        phase: Phase,
        end_of_stream: bool,
        request: &mut RequestHeader,
        response: Option<&mut ResponseHeader>,
    ) -> Result<Called, String> {
        let mut guard = plugin
            .lock(self.links[index].slot)
            .map_err(|e| e.to_string())?;
        let generation = guard.generation;
        let Some(vm) = guard.vm() else {
            return Err("no VM".into());
        };
        let context = match self.links[index].context {
            Some((g, id)) if g == generation => id,
            Some(_) => return Err(REBUILT.into()),
            None => match vm.create_http_context() {
                Ok(id) => {
                    self.links[index].context = Some((generation, id));
                    id
                }
                Err(fault) => {
                    guard.discard();
                    return Err(fault.to_string());
                }
            },
        };
        let header_count = |n: usize| u32::try_from(n + 4).unwrap_or(u32::MAX);
        let result = with_exchange(vm, &mut self.exchange, request, response, |vm| {
            match phase {
                Phase::RequestHeaders => {
                    let n = header_count(vm.state().request_headers.headers.len());
                    vm.on_request_headers(context, n, end_of_stream)
                }
                Phase::ResponseHeaders => {
                    let n = header_count(vm.state().response_headers.headers.len());
                    vm.on_response_headers(context, n, end_of_stream)
                }
            }
            .map(|action| (action, std::mem::take(&mut vm.state_mut().callouts)))
        });
        let (action, pending) = match result {
            Ok(done) => done,
            Err(fault) => {
                guard.discard();
                return Err(fault.to_string());
            }
        };
        drop(guard);
        if let Some(local) = self.exchange.local_response.take() {
            return Ok(Called::Done(Some(local)));
        }
        if action == Action::Continue && pending.is_empty() {
            return Ok(Called::Done(None));
        }
        if phase == Phase::ResponseHeaders && action == Action::Pause && pending.is_empty() {
            self.response_headers_held = true;
            return Ok(Called::Done(None));
        }
        Ok(Called::Paused(action, pending))
    }

    /// A paused plugin's callouts: each runs off the VM lock, then its answer is delivered with
    /// `on_http_call_response` (which may dispatch more); returns the plugin's local response.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        action: Action,
        mut pending: Vec<CalloutRequest>,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        callouts: &Callouts,
    ) -> Result<Option<LocalResponse>, String> {
        let Some((generation, context)) = self.links[index].context else {
            return Err(REBUILT.into());
        };
        while !pending.is_empty() {
            let answers = callouts.run_all(std::mem::take(&mut pending)).await;
            for (token, answer) in answers {
                let mut guard = lock_generation(plugin, self.links[index].slot, Some(generation))?;
                let Some(vm) = guard.vm() else {
                    return Err("no VM".into());
                };
                let result = with_exchange(
                    vm,
                    &mut self.exchange,
                    request,
                    response.as_deref_mut(),
                    |vm| {
                        let (headers, body) = answer.sizes();
                        vm.state_mut().callout_response = answer.response;
                        let delivered = vm.on_http_call_response(context, token, headers, body);
                        let state = vm.state_mut();
                        state.callout_response = None;
                        delivered.map(|()| std::mem::take(&mut state.callouts))
                    },
                );
                match result {
                    Ok(more) => pending.extend(more),
                    Err(fault) => {
                        guard.discard();
                        return Err(fault.to_string());
                    }
                }
                if let Some(local) = self.exchange.local_response.take() {
                    return Ok(Some(local));
                }
            }
        }
        if action == Action::Pause && !self.exchange.resumed {
            tracing::warn!(plugin = %plugin.name(), "plugin paused the request and did not resume it: continuing");
        }
        self.exchange.resumed = false;
        Ok(None)
    }

    /// Runs the request body callbacks on `chunk` (see [`Chain::body`]).
    pub fn request_body(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        request: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<BodyStep, LocalResponse> {
        self.body(plugins, BodyKind::Request, request, chunk, end_of_stream)
    }

    /// Runs the response body callbacks on `chunk` (see [`Chain::body`]).
    pub fn response_body(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        request: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<BodyStep, LocalResponse> {
        self.body(plugins, BodyKind::Response, request, chunk, end_of_stream)
    }

    /// Passes the bytes down the chain as Envoy does: a plugin that pauses before the end of
    /// the stream buffers (it sees the whole body so far at each call, and the rest of the
    /// chain sees nothing until it continues); what a plugin writes with
    /// `proxy_set_buffer_bytes` is what the next one sees. Each plugin is told the end of stream
    /// once (see [`BodyProgress`]). Callouts are not run from body callbacks. `Err` is the
    /// answer for a `closed` plugin's failure, or for a body held beyond the plugin's
    /// `limits.max_body_bytes` (any failure mode): the request must be aborted.
    fn body(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        kind: BodyKind,
        request: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<BodyStep, LocalResponse> {
        let mut data = chunk.unwrap_or_default();
        let buffering = self.links.iter().any(|l| match kind {
            BodyKind::Request => l.request_buffer.is_some(),
            BodyKind::Response => l.response_buffer.is_some(),
        });
        let progress = match kind {
            BodyKind::Request => &mut self.request_body,
            BodyKind::Response => &mut self.response_body,
        };
        if progress.ended {
            return Ok(BodyStep::Forward(data));
        }
        let end_of_stream = progress.receive(data.len(), end_of_stream);
        if data.is_empty() && !buffering && !(end_of_stream && progress.open) {
            // Nothing to show a plugin (no body, or an empty read that ends nothing it saw).
            return Ok(BodyStep::Forward(data));
        }
        progress.open = !end_of_stream;
        for index in 0..self.links.len() {
            if self.links[index].skipped {
                continue;
            }
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                continue;
            };
            let buffer = match kind {
                BodyKind::Request => self.links[index].request_buffer.take(),
                BodyKind::Response => self.links[index].response_buffer.take(),
            };
            if let Some(mut held) = buffer {
                held.extend_from_slice(&data);
                data = Bytes::from(held);
            }
            match self.body_call(plugin, index, kind, request, data, end_of_stream) {
                Ok((Action::Pause, held)) if !end_of_stream => {
                    let link = &mut self.links[index];
                    // The buffer's own allocation comes back (no copy of all held so far per
                    // chunk, which made buffering quadratic) when nothing else shares it.
                    let held = Vec::from(held);
                    let limit = plugin.spec.max_body_bytes;
                    if held.len() > limit {
                        tracing::warn!(plugin = %plugin.name(), limit, "plugin's buffered body exceeds limits.max_body_bytes");
                        return Err(body_too_large(plugin.name(), kind, limit));
                    }
                    match kind {
                        BodyKind::Request => link.request_buffer = Some(held),
                        BodyKind::Response => link.response_buffer = Some(held),
                    }
                    return Ok(BodyStep::Hold);
                }
                Ok((_, passed)) => data = passed,
                Err((why, passed)) => {
                    data = passed;
                    if let Some(answer) = self.fail(plugin, index, &why) {
                        return Err(answer);
                    }
                }
            }
        }
        Ok(BodyStep::Forward(data))
    }

    /// One plugin's body callback on `data`; returns its action and the bytes it leaves (the
    /// input when it failed).
    fn body_call(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        kind: BodyKind,
        request: &mut RequestHeader,
        data: Bytes,
        end_of_stream: bool,
    ) -> Result<(Action, Bytes), (String, Bytes)> {
        let Some((generation, context)) = self.links[index].context else {
            return Ok((Action::Continue, data));
        };
        let mut guard = match lock_generation(plugin, self.links[index].slot, Some(generation)) {
            Ok(guard) => guard,
            Err(why) => return Err((why, data)),
        };
        let Some(vm) = guard.vm() else {
            return Err(("no VM".into(), data));
        };
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.exchange.body = Some((kind, data));
        let result = with_exchange(vm, &mut self.exchange, request, None, |vm| match kind {
            BodyKind::Request => vm.on_request_body(context, size, end_of_stream),
            BodyKind::Response => vm.on_response_body(context, size, end_of_stream),
        });
        let passed = self
            .exchange
            .body
            .take()
            .map(|(_, bytes)| bytes)
            .unwrap_or_default();
        let before_edit = self.exchange.body_before_edit.take();
        match result {
            Ok(action) => Ok((action, passed)),
            Err(fault) => {
                guard.discard();
                // The bytes the plugin was given, not its half-done edit.
                Err((fault.to_string(), before_edit.unwrap_or(passed)))
            }
        }
    }

    /// Applies plugin `index`'s failure mode after `why`; a 503 when it is `closed`.
    fn fail(&mut self, plugin: &RunningPlugin, index: usize, why: &str) -> Option<LocalResponse> {
        let link = &mut self.links[index];
        link.skipped = true;
        link.context = None;
        let mode = plugin.failure_mode();
        plugin.count_failure(mode);
        tracing::warn!(plugin = %plugin.name(), ?mode, %why, "plugin failed for this request");
        match mode {
            FailureMode::Closed => Some(failed_response(plugin.name(), why)),
            FailureMode::Open => None,
        }
    }

    /// The end of the request: `on_done`, `on_log`, `on_delete` for every live context.
    pub fn finish(
        &mut self,
        plugins: &[Arc<RunningPlugin>],
        request: &mut RequestHeader,
        response_code: Option<u16>,
    ) {
        if response_code.is_some() {
            self.exchange.response_code = response_code;
        }
        for link in &mut self.links {
            let Some((generation, context)) = link.context.take() else {
                continue;
            };
            let Some(plugin) = plugins.get(link.plugin) else {
                continue;
            };
            let Ok(mut guard) = plugin.lock(link.slot) else {
                continue;
            };
            if guard.generation != generation {
                continue;
            }
            let Some(vm) = guard.vm() else { continue };
            let result: Result<(), Fault> =
                with_exchange(vm, &mut self.exchange, request, None, |vm| {
                    vm.finish_context(context)
                });
            if let Err(fault) = result {
                guard.discard();
                tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed at the end of a request");
            }
        }
    }
}
