//! The header phases: `on_request_headers` in the route's order, `on_response_headers` in the
//! reverse order (Envoy's encoder order), each plugin's callback on the request's context, and
//! the callouts a plugin pauses on, run off the VM lock and answered with
//! `on_http_call_response` before the chain goes on.

use pingora::http::{RequestHeader, ResponseHeader};

use super::super::callout::Callouts;
use super::super::host::RunningPlugin;
use super::super::state::{CalloutRequest, LocalResponse};
use super::super::vm::Action;
use super::entry::{header_count, with_exchange, Phase};
use super::failure::CallError;
use super::{Chain, Outcome, PluginList};
use crate::framing;

/// What a header callback left to do.
enum Called {
    /// Nothing: go on, or answer with this local response.
    Done(Option<LocalResponse>),
    /// The plugin paused (with callouts to run, or waiting for a resume).
    Paused(Action, Vec<CalloutRequest>),
}

impl Chain {
    /// Runs `on_request_headers` down the chain (before the cache: hits are filtered too).
    pub async fn request_headers(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        callouts: &Callouts,
    ) -> Outcome {
        self.request_body
            .announce(framing::content_length(&request.headers));
        let end_of_stream = !framing::request_has_body(request);
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

    /// Runs `on_response_headers` up the chain (hits and misses alike).
    pub async fn response_headers(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        response: &mut ResponseHeader,
        callouts: &Callouts,
    ) -> Outcome {
        self.exchange.response_code = Some(response.status.as_u16());
        let announced = framing::content_length(&response.headers);
        self.response_body.announce(announced);
        let end_of_stream =
            !framing::response_may_have_body(request, response) || announced == Some(0);
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
        plugins: PluginList<'_>,
        phase: Phase,
        end_of_stream: bool,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        callouts: &Callouts,
    ) -> Outcome {
        let response_side = phase == Phase::ResponseHeaders;
        for step in 0..self.span(response_side) {
            let index = self.link_at(response_side, step);
            if self.links[index].skipped {
                continue;
            }
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                continue;
            };
            // A callout in flight when the VM is rebuilt under the request: the phase is run
            // again on the request's new context there (once).
            let mut attempts = 0;
            let step = loop {
                attempts += 1;
                let called = self.call(
                    plugin,
                    index,
                    phase,
                    end_of_stream,
                    request,
                    response.as_deref_mut(),
                );
                let step = match called {
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
                    Err(CallError::Rebuilt) if attempts < 2 => continue,
                    step => break step,
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(local)) => {
                    if !response_side {
                        self.answered_by(index);
                    }
                    return Outcome::Respond(local);
                }
                Err(why) => {
                    if let Some(local) = self.fail(plugin, index, &why) {
                        return Outcome::Respond(local);
                    }
                }
            }
        }
        Outcome::Continue
    }

    /// One plugin's callback for `phase`.
    fn call(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        phase: Phase,
        end_of_stream: bool,
        request: &mut RequestHeader,
        response: Option<&mut ResponseHeader>,
    ) -> Result<Called, CallError> {
        let Some((mut guard, context)) = self.enter(plugin, index, phase, request)? else {
            return Ok(Called::Done(None));
        };
        let Some(vm) = guard.vm() else {
            return Ok(Called::Done(None));
        };
        if phase == Phase::RequestHeaders {
            self.links[index].request_headers_ended = Some(end_of_stream);
        }
        let (result, pending) = with_exchange(vm, &mut self.exchange, request, response, |vm| {
            if phase == Phase::RequestHeaders {
                let n = header_count(vm.state().request_headers.headers.len());
                vm.on_request_headers(context, n, end_of_stream)
            } else {
                let n = header_count(vm.state().response_headers.headers.len());
                vm.on_response_headers(context, n, end_of_stream)
            }
        });
        let action = match result {
            Ok(action) => action,
            Err(fault) => {
                guard.discard();
                return Err(fault.into());
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
    pub(super) async fn deliver(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        action: Action,
        mut pending: Vec<CalloutRequest>,
        request: &mut RequestHeader,
        mut response: Option<&mut ResponseHeader>,
        callouts: &Callouts,
    ) -> Result<Option<LocalResponse>, CallError> {
        let Some((generation, context)) = self.links[index].context else {
            return Err(CallError::Rebuilt);
        };
        while !pending.is_empty() {
            let answers = callouts.run_all(std::mem::take(&mut pending)).await;
            for (token, answer) in answers {
                let mut guard = plugin.lock(self.links[index].slot)?;
                if guard.generation != generation {
                    return Err(CallError::Rebuilt);
                }
                let Some(vm) = guard.vm() else {
                    return Err(CallError::Rebuilt);
                };
                let (result, more) = with_exchange(
                    vm,
                    &mut self.exchange,
                    request,
                    response.as_deref_mut(),
                    |vm| vm.on_http_call_answer(context, token, answer),
                );
                if let Err(fault) = result {
                    guard.discard();
                    return Err(fault.into());
                }
                pending.extend(more);
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
}
