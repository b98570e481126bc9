//! The end of a request for its plugins: `on_done` and `on_log` on every context, then
//! `on_delete`. Callouts a context dispatched where nothing could wait for them (response body
//! callbacks, `on_done`, `on_log`) are run for that context after the response
//! ([`Leftovers::run`]), their answers delivered to it with `on_http_call_response` (which may
//! dispatch more), and only then is it deleted: a plugin that ships its log line with a
//! callout from `on_log` works, and nothing is left for the next request to pick up.

use std::sync::Arc;

use pingora::http::RequestHeader;

use super::super::callout::Callouts;
use super::super::host::RunningPlugin;
use super::super::state::{CalloutRequest, Exchange};
use super::entry::{with_exchange, Phase};
use super::{Chain, PluginList};

/// A context whose callouts are still to run before it is deleted.
#[derive(Debug)]
struct Waiting {
    plugin: Arc<RunningPlugin>,
    slot: usize,
    generation: u64,
    context: u32,
    callouts: Vec<CalloutRequest>,
}

/// The contexts of a finished request that still have callouts to run.
#[derive(Debug)]
pub struct Leftovers {
    exchange: Box<Exchange>,
    request: RequestHeader,
    waiting: Vec<Waiting>,
}

impl Chain {
    /// `on_done` and `on_log` for every live context, then `on_delete` for those with nothing
    /// left to run; the others come back as [`Leftovers`] for the caller to run off the
    /// request's path.
    pub fn finish(
        &mut self,
        plugins: PluginList<'_>,
        request: &mut RequestHeader,
        response_code: Option<u16>,
    ) -> Option<Leftovers> {
        if response_code.is_some() {
            self.exchange.response_code = response_code;
        }
        let mut waiting = Vec::new();
        for index in 0..self.links.len() {
            if self.links[index].skipped || self.links[index].context.is_none() {
                continue;
            }
            let Some(plugin) = plugins.get(self.links[index].plugin) else {
                continue;
            };
            let (mut guard, context) = match self.enter(plugin, index, Phase::Finish, request) {
                Ok(Some(entered)) => entered,
                Ok(None) => continue,
                Err(why) => {
                    tracing::warn!(plugin = %plugin.name(), %why, "plugin failed at the end of a request");
                    continue;
                }
            };
            let Some(vm) = guard.vm() else { continue };
            let (result, dispatched) = with_exchange(vm, &mut self.exchange, request, None, |vm| {
                vm.done_and_log(context)
            });
            // A local response is meaningless now.
            self.exchange.local_response = None;
            if let Err(fault) = result {
                guard.discard();
                tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed at the end of a request");
                continue;
            }
            let link = &mut self.links[index];
            let mut callouts = std::mem::take(&mut link.later_callouts);
            callouts.extend(dispatched);
            if callouts.is_empty() {
                if let Err(fault) = vm.delete_context(context) {
                    guard.discard();
                    tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed deleting a context");
                }
                continue;
            }
            waiting.push(Waiting {
                plugin: plugin.clone(),
                slot: link.slot,
                generation: guard.generation,
                context,
                callouts,
            });
        }
        if waiting.is_empty() {
            return None;
        }
        Some(Leftovers {
            exchange: std::mem::take(&mut self.exchange),
            request: request.clone(),
            waiting,
        })
    }
}

impl Leftovers {
    /// Runs each waiting context's callouts, delivers their answers, and deletes it.
    pub async fn run(mut self, callouts: Arc<Callouts>) {
        for waiting in std::mem::take(&mut self.waiting) {
            self.settle(waiting, &callouts).await;
        }
    }

    async fn settle(&mut self, waiting: Waiting, callouts: &Callouts) {
        let Waiting {
            plugin,
            slot,
            generation,
            context,
            callouts: mut pending,
        } = waiting;
        while !pending.is_empty() {
            for (token, answer) in callouts.run_all(std::mem::take(&mut pending)).await {
                let Ok(mut guard) = plugin.lock(slot) else {
                    return;
                };
                if guard.generation != generation {
                    return;
                }
                let Some(vm) = guard.vm() else { return };
                let (result, more) =
                    with_exchange(vm, &mut self.exchange, &mut self.request, None, |vm| {
                        vm.on_http_call_answer(context, token, answer)
                    });
                self.exchange.local_response = None;
                if let Err(fault) = result {
                    guard.discard();
                    tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed in a callout response after its request");
                    return;
                }
                pending.extend(more);
            }
        }
        let Ok(mut guard) = plugin.lock(slot) else {
            return;
        };
        if guard.generation != generation {
            return;
        }
        let Some(vm) = guard.vm() else { return };
        if let Err(fault) = vm.delete_context(context) {
            guard.discard();
            tracing::warn!(plugin = %plugin.name(), %fault, "plugin failed deleting a context");
        }
    }
}
