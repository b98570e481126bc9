//! Entering a plugin's VM for one of a request's callbacks: the VM slot locked, the request's
//! context there (created on the first callback), and the request's exchange and headers moved
//! into the VM's store for the length of the call.
//!
//! A VM is rebuilt when any request faults in it; the other requests that had contexts on it
//! are still in flight. Their old contexts died with the old instance (a guest that trapped
//! mid-callback is not safe to call again: the Rust SDK, for one, leaves its context table
//! borrowed), so each of them gets a new context on the new VM, with its `on_request_headers`
//! re-run there (muted: its edits, local response and callouts are discarded, since that phase
//! already happened), and then carries on. Nobody's request fails because of another's fault.

use pingora::http::{RequestHeader, ResponseHeader};

use super::super::host::{RunningPlugin, VmGuard};
use super::super::state::{CalloutRequest, Exchange};
use super::super::vm::Vm;
use super::failure::CallError;
use super::Chain;

/// The phases of a request, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Finish,
}

/// The header count a headers callback is given (the map's entries plus the pseudo-headers).
pub fn header_count(n: usize) -> u32 {
    u32::try_from(n + 4).unwrap_or(u32::MAX)
}

/// Runs `call` with the request's exchange and headers moved into the VM's store (a pointer
/// swap each way); returns its result and the callouts it dispatched, taken from the store so
/// that none is left for another context's callback to pick up.
pub fn with_exchange<R>(
    vm: &mut Vm,
    exchange: &mut Box<Exchange>,
    request: &mut RequestHeader,
    response: Option<&mut ResponseHeader>,
    call: impl FnOnce(&mut Vm) -> R,
) -> (R, Vec<CalloutRequest>) {
    let state = vm.state_mut();
    std::mem::swap(&mut state.exchange, exchange);
    std::mem::swap(&mut state.request_headers, request);
    state.request_live = true;
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
    if let Some(r) = &mut response {
        std::mem::swap(&mut state.response_headers, r);
        state.response_live = false;
    }
    (result, std::mem::take(&mut state.callouts))
}

impl Chain {
    /// Locks the VM of link `index` for a `phase` callback, with the request's context there:
    /// created on the request's first callback (`on_request_headers`), or created anew and
    /// brought up to date when the VM was rebuilt under the request (see the module docs).
    /// `None` when the plugin has no context for this request (it never saw the request, so
    /// it sees none of its later phases either).
    pub(super) fn enter<'p>(
        &mut self,
        plugin: &'p RunningPlugin,
        index: usize,
        phase: Phase,
        request: &RequestHeader,
    ) -> Result<Option<(VmGuard<'p>, u32)>, CallError> {
        let mut guard = plugin.lock(self.links[index].slot)?;
        let generation = guard.generation;
        let known = self.links[index].context;
        if let Some((g, id)) = known {
            if g == generation {
                return Ok(Some((guard, id)));
            }
        } else if phase != Phase::RequestHeaders {
            return Ok(None);
        }
        let Some(vm) = guard.vm() else {
            return Ok(None);
        };
        let id = match vm.create_http_context() {
            Ok(id) => id,
            Err(fault) => {
                guard.discard();
                return Err(fault.into());
            }
        };
        let replay = self.links[index].request_headers_ended;
        if let (Some(_), Some(end_of_stream)) = (known, replay) {
            if phase > Phase::RequestHeaders {
                if let Err(fault) = self.replay_request_headers(vm, id, request, end_of_stream) {
                    guard.discard();
                    return Err(CallError::Revive(fault));
                }
            }
        }
        if known.is_some() {
            plugin.count_revival();
        }
        self.links[index].context = Some((generation, id));
        Ok(Some((guard, id)))
    }

    /// `on_request_headers` again, for a context created after that phase: on a copy of the
    /// request (it was already forwarded), with its local response and callouts discarded.
    fn replay_request_headers(
        &mut self,
        vm: &mut Vm,
        context: u32,
        request: &RequestHeader,
        end_of_stream: bool,
    ) -> Result<(), super::super::Fault> {
        let mut copy = request.clone();
        let count = header_count(copy.headers.len());
        let (result, _callouts) = with_exchange(vm, &mut self.exchange, &mut copy, None, |vm| {
            vm.on_request_headers(context, count, end_of_stream)
        });
        self.exchange.local_response = None;
        self.exchange.resumed = false;
        result.map(drop)
    }
}
