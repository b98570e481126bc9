//! Body streaming through the chain, as Envoy does it: each chunk goes down the chain (request
//! side in the route's order, response side in reverse); a plugin that pauses before the end
//! of the stream buffers (it sees the whole body so far at each call, and the plugins after it
//! see nothing until it continues); what a plugin writes with `proxy_set_buffer_bytes` is what
//! the next one sees; each plugin is told the end of the stream once ([`BodyProgress`]).
//!
//! A local response from a body callback ends the request with it. Callouts from a request
//! body callback are answered before the chunk goes on; the response body filter cannot wait
//! (Pingora runs it synchronously), so callouts from response body callbacks are kept on the
//! link and answered after the response, before the context is deleted.

use bytes::Bytes;
use pingora::http::RequestHeader;

use super::super::callout::Callouts;
use super::super::host::RunningPlugin;
use super::super::state::{BodyKind, CalloutRequest, LocalResponse};
use super::super::vm::Action;
use super::entry::{with_exchange, Phase};
use super::failure::{body_too_large, CallError};
use super::{Chain, PluginList};

/// What the body callbacks decided for the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// Send these bytes on (possibly rewritten, possibly empty).
    Forward(Bytes),
    /// A plugin is buffering: send nothing yet.
    Hold,
}

/// How far one direction's body has been shown to the chain. The end of stream is the chunk
/// that completes the announced `Content-Length` (as Envoy's HTTP/1 codec reports it), or the
/// empty last read of a chunked body, which plugins that saw earlier chunks are then shown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BodyProgress {
    /// The body's length as announced when it arrives (before any plugin edits its framing).
    announced: Option<u64>,
    received: u64,
    /// Plugins have seen a chunk that was not the end of stream.
    open: bool,
    /// The stream has ended (shown to the plugins, or nothing to show): later reads pass by.
    ended: bool,
}

/// What to do with a chunk that just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Nothing for the plugins: pass it by.
    PassBy,
    /// Show it to the chain; whether it ends the stream.
    Show { end_of_stream: bool },
}

impl BodyProgress {
    /// The headers arrived, announcing this length (if any): a new stream.
    pub fn announce(&mut self, announced: Option<u64>) {
        *self = Self {
            announced,
            ..Self::default()
        };
    }

    /// Counts a chunk of `len` bytes; `buffering` says whether a plugin holds earlier bytes
    /// (which then must see even an empty chunk).
    pub fn arrive(&mut self, len: usize, end_of_stream: bool, buffering: bool) -> Arrival {
        if self.ended {
            return Arrival::PassBy;
        }
        self.received = self.received.saturating_add(len as u64);
        let end_of_stream = end_of_stream || self.announced.is_some_and(|n| self.received >= n);
        self.ended = end_of_stream;
        if len == 0 && !buffering && !(end_of_stream && self.open) {
            // No body, or an empty read that ends nothing a plugin saw.
            return Arrival::PassBy;
        }
        self.open = !end_of_stream;
        Arrival::Show { end_of_stream }
    }
}

/// Where a pass of a chunk down the chain stopped.
enum Pass {
    Done(BodyStep),
    /// A plugin answered locally, failed `closed`, or buffered beyond its limit.
    Answer(LocalResponse),
    /// The plugin at step `at` (link `index`) dispatched callouts (request side only).
    Callouts {
        at: usize,
        index: usize,
        action: Action,
        pending: Vec<CalloutRequest>,
        data: Bytes,
    },
}

impl Chain {
    /// Runs the request body callbacks on `chunk`; `Err` is the answer that ends the request
    /// (a plugin's local response, a `closed` plugin's failure, a body over a plugin's limit).
    pub async fn request_body(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
        callouts: &Callouts,
    ) -> Result<BodyStep, LocalResponse> {
        let mut data = chunk.unwrap_or_default();
        let end_of_stream = match self.arrive(BodyKind::Request, data.len(), end_of_stream) {
            Arrival::PassBy => return Ok(BodyStep::Forward(data)),
            Arrival::Show { end_of_stream } => end_of_stream,
        };
        let mut from = 0;
        loop {
            let pass = self.pass(
                plugins,
                BodyKind::Request,
                request,
                from,
                data,
                end_of_stream,
            );
            let (at, index, action, pending, passed) = match pass {
                Pass::Done(step) => return Ok(step),
                Pass::Answer(answer) => return Err(answer),
                Pass::Callouts {
                    at,
                    index,
                    action,
                    pending,
                    data,
                } => (at, index, action, pending, data),
            };
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                return Ok(BodyStep::Forward(passed));
            };
            let delivered =
                Box::pin(self.deliver(plugin, index, action, pending, request, None, callouts))
                    .await;
            match delivered {
                Ok(None) => {}
                Ok(Some(local)) => {
                    self.answered_by(index);
                    return Err(local);
                }
                Err(why) => {
                    if let Some(answer) = self.fail(plugin, index, &why) {
                        return Err(answer);
                    }
                }
            }
            data = passed;
            from = at + 1;
        }
    }

    /// Runs the response body callbacks on `chunk`; `Err` as for [`Chain::request_body`] (the
    /// response head is already out by now: the proxy can only abort the response).
    pub fn response_body(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<BodyStep, LocalResponse> {
        let data = chunk.unwrap_or_default();
        let end_of_stream = match self.arrive(BodyKind::Response, data.len(), end_of_stream) {
            Arrival::PassBy => return Ok(BodyStep::Forward(data)),
            Arrival::Show { end_of_stream } => end_of_stream,
        };
        match self.pass(plugins, BodyKind::Response, request, 0, data, end_of_stream) {
            Pass::Done(step) => Ok(step),
            Pass::Answer(answer) => Err(answer),
            // Never returned for the response side (its callouts wait on their links).
            Pass::Callouts { data, .. } => Ok(BodyStep::Forward(data)),
        }
    }

    fn arrive(&mut self, kind: BodyKind, len: usize, end_of_stream: bool) -> Arrival {
        let buffering = self.links.iter().any(|l| match kind {
            BodyKind::Request => l.request_buffer.is_some(),
            BodyKind::Response => l.response_buffer.is_some(),
        });
        let progress = match kind {
            BodyKind::Request => &mut self.request_body,
            BodyKind::Response => &mut self.response_body,
        };
        progress.arrive(len, end_of_stream, buffering)
    }

    /// Passes `data` down the chain from step `from` of `kind`'s order.
    fn pass(
        &mut self,
        plugins: PluginList<'_>,
        kind: BodyKind,
        request: &mut RequestHeader,
        from: usize,
        mut data: Bytes,
        end_of_stream: bool,
    ) -> Pass {
        let response_side = kind == BodyKind::Response;
        for at in from..self.span(response_side) {
            let index = self.link_at(response_side, at);
            if self.links[index].skipped {
                continue;
            }
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                continue;
            };
            let link = &mut self.links[index];
            let buffer = match kind {
                BodyKind::Request => link.request_buffer.take(),
                BodyKind::Response => link.response_buffer.take(),
            };
            if let Some(mut held) = buffer {
                held.extend_from_slice(&data);
                data = Bytes::from(held);
            }
            let (action, passed, pending) =
                match self.body_call(plugin, index, kind, request, data, end_of_stream) {
                    Ok(called) => called,
                    Err((why, passed)) => {
                        data = passed;
                        if let Some(answer) = self.fail(plugin, index, &why) {
                            return Pass::Answer(answer);
                        }
                        continue;
                    }
                };
            if let Some(local) = self.exchange.local_response.take() {
                self.answered_by(index);
                return Pass::Answer(local);
            }
            if !pending.is_empty() {
                if !response_side {
                    return Pass::Callouts {
                        at,
                        index,
                        action,
                        pending,
                        data: passed,
                    };
                }
                self.links[index].later_callouts.extend(pending);
            }
            if action == Action::Pause && !end_of_stream {
                // The buffer's own allocation comes back (no copy of all held so far per
                // chunk, which made buffering quadratic) when nothing else shares it.
                let held = Vec::from(passed);
                let limit = plugin.spec.max_body_bytes;
                if held.len() > limit {
                    tracing::warn!(plugin = %plugin.name(), limit, "plugin's buffered body exceeds limits.max_body_bytes");
                    self.answered_by(index);
                    return Pass::Answer(body_too_large(plugin.name(), kind, limit));
                }
                let link = &mut self.links[index];
                match kind {
                    BodyKind::Request => link.request_buffer = Some(held),
                    BodyKind::Response => link.response_buffer = Some(held),
                }
                return Pass::Done(BodyStep::Hold);
            }
            data = passed;
        }
        Pass::Done(BodyStep::Forward(data))
    }

    /// One plugin's body callback on `data`; returns its action, the bytes it leaves and the
    /// callouts it dispatched (on failure, the bytes it was given).
    fn body_call(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        kind: BodyKind,
        request: &mut RequestHeader,
        data: Bytes,
        end_of_stream: bool,
    ) -> Result<(Action, Bytes, Vec<CalloutRequest>), (CallError, Bytes)> {
        let phase = match kind {
            BodyKind::Request => Phase::RequestBody,
            BodyKind::Response => Phase::ResponseBody,
        };
        let (mut guard, context) = match self.enter(plugin, index, phase, request) {
            Ok(Some(entered)) => entered,
            Ok(None) => return Ok((Action::Continue, data, Vec::new())),
            Err(why) => return Err((why, data)),
        };
        let Some(vm) = guard.vm() else {
            return Ok((Action::Continue, data, Vec::new()));
        };
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.exchange.body = Some((kind, data));
        let (result, pending) =
            with_exchange(vm, &mut self.exchange, request, None, |vm| match kind {
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
            Ok(action) => Ok((action, passed, pending)),
            Err(fault) => {
                guard.discard();
                // The bytes the plugin was given, not its half-done edit.
                Err((fault.into(), before_edit.unwrap_or(passed)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(end_of_stream: bool) -> Arrival {
        Arrival::Show { end_of_stream }
    }

    #[test]
    fn an_announced_length_ends_the_stream_at_its_last_byte() {
        let mut p = BodyProgress::default();
        p.announce(Some(10));
        assert_eq!(p.arrive(4, false, false), show(false));
        assert_eq!(p.arrive(6, false, false), show(true));
        // Pingora's own empty end-of-stream read afterwards passes by.
        assert_eq!(p.arrive(0, true, false), Arrival::PassBy);
        assert_eq!(p.arrive(3, false, false), Arrival::PassBy);
    }

    #[test]
    fn a_chunked_body_ends_with_its_empty_last_read_shown_to_those_who_saw_chunks() {
        let mut p = BodyProgress::default();
        p.announce(None);
        assert_eq!(p.arrive(5, false, false), show(false));
        assert_eq!(p.arrive(0, true, false), show(true));
        assert_eq!(p.arrive(0, true, false), Arrival::PassBy);
    }

    #[test]
    fn no_body_shows_nothing_and_an_empty_read_matters_only_to_a_buffering_plugin() {
        let mut p = BodyProgress::default();
        p.announce(None);
        assert_eq!(p.arrive(0, true, false), Arrival::PassBy);
        let mut p = BodyProgress::default();
        p.announce(None);
        assert_eq!(p.arrive(0, false, false), Arrival::PassBy);
        assert_eq!(p.arrive(0, false, true), show(false));
        assert_eq!(p.arrive(2, true, true), show(true));
    }

    #[test]
    fn a_new_announcement_starts_a_new_stream() {
        let mut p = BodyProgress::default();
        p.announce(Some(1));
        assert_eq!(p.arrive(1, false, false), show(true));
        p.announce(Some(2));
        assert_eq!(p.arrive(1, false, false), show(false));
    }
}
