//! One VM: an instance of a plugin's module in its own store, sandboxed by a memory cap and a
//! per-call CPU deadline (epoch ticks), with its root context created and `on_vm_start` /
//! `on_configure` run. Every call goes through [`Vm::call`], which counts and times it and turns a
//! trap, an overrun deadline or a memory blow-up into a [`Fault`]; a VM that faulted is dropped.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Instance, InstancePre, Store, Trap, TypedFunc, WasmParams, WasmResults};

use super::callback_metrics::LocalCalls;
pub use super::callback_metrics::{CallMetrics, Callback, FLUSH_AFTER};
use super::state::{HostState, PluginShared};
use super::{Fault, PluginError};

/// The root context of every VM (one plugin per VM).
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Whether the filter chain goes on (proxy-wasm `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// `proxy_on_http_call_response(context, token, headers, body, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// Picks `proxy_on_vm_start` or `proxy_on_configure` (root context, config size) -> accepted.
type PickConfigure = fn(&Exports) -> Option<&TypedFunc<(u32, u32), u32>>;

/// `proxy_on_{request,response}_{headers,body}(context, size, end_of_stream) -> action`.
type HeadersFn = TypedFunc<(u32, u32, u32), u32>;

struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    on_configure: Option<TypedFunc<(u32, u32), u32>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_request_headers: Option<HeadersFn>,
    on_request_body: Option<HeadersFn>,
    on_response_headers: Option<HeadersFn>,
    on_response_body: Option<HeadersFn>,
    on_http_call_response: Option<CallResponseFn>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
}

pub struct Vm {
    store: Store<HostState>,
    exports: Exports,
    next_context_id: u32,
    deadline_ticks: u64,
    metrics: CallMetrics,
    local: LocalCalls,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.local.flush();
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("plugin", &self.store.data().plugin.name)
            .finish_non_exhaustive()
    }
}

fn typed<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
) -> Option<TypedFunc<P, R>> {
    instance.get_typed_func::<P, R>(&mut *store, name).ok()
}

fn classify(error: wasmtime::Error, state: &HostState) -> Fault {
    if state.memory_denied {
        return Fault::Memory;
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Fault::Deadline;
    }
    let mut text = format!("{error:#}");
    text.truncate(400);
    Fault::Trap(text)
}

impl Vm {
    /// Instantiates the plugin and runs its start-up: `_initialize`, the root context,
    /// `on_vm_start` with the VM config and `on_configure` with the plugin config.
    pub fn start(
        pre: &InstancePre<HostState>,
        shared: Arc<PluginShared>,
        memory_cap: usize,
        deadline_ticks: u64,
        metrics: CallMetrics,
        tick_period_ms: Arc<std::sync::atomic::AtomicU32>,
    ) -> Result<Self, PluginError> {
        let name = shared.name.clone();
        let fault = |callback: Callback, fault: Fault| PluginError::Fault {
            plugin: name.clone(),
            callback: callback.name(),
            fault,
        };
        let mut store = Store::new(
            pre.module().engine(),
            HostState::new(shared.clone(), memory_cap, tick_period_ms),
        );
        store.limiter(|state| state);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        let instance = pre.instantiate(&mut store).map_err(|e| {
            let f = classify(e, store.data());
            fault(Callback::Initialize, f)
        })?;
        let memory = instance.get_memory(&mut store, "memory");
        let allocator = typed::<u32, u32>(&mut store, &instance, "proxy_on_memory_allocate")
            .or_else(|| typed::<u32, u32>(&mut store, &instance, "malloc"));
        store.data_mut().memory = memory;
        store.data_mut().allocator = allocator;
        let on_context_create = typed(&mut store, &instance, "proxy_on_context_create")
            .ok_or_else(|| PluginError::MissingImport {
                plugin: name.clone(),
                missing: "(export) proxy_on_context_create".into(),
            })?;
        let exports = Exports {
            initialize: typed(&mut store, &instance, "_initialize"),
            on_context_create,
            on_vm_start: typed(&mut store, &instance, "proxy_on_vm_start"),
            on_configure: typed(&mut store, &instance, "proxy_on_configure"),
            on_tick: typed(&mut store, &instance, "proxy_on_tick"),
            on_request_headers: typed(&mut store, &instance, "proxy_on_request_headers"),
            on_request_body: typed(&mut store, &instance, "proxy_on_request_body"),
            on_response_headers: typed(&mut store, &instance, "proxy_on_response_headers"),
            on_response_body: typed(&mut store, &instance, "proxy_on_response_body"),
            on_http_call_response: typed(&mut store, &instance, "proxy_on_http_call_response"),
            on_log: typed(&mut store, &instance, "proxy_on_log"),
            on_done: typed(&mut store, &instance, "proxy_on_done"),
            on_delete: typed(&mut store, &instance, "proxy_on_delete"),
        };
        let mut vm = Self {
            store,
            exports,
            next_context_id: ROOT_CONTEXT_ID + 1,
            deadline_ticks,
            local: metrics.local(),
            metrics,
        };
        vm.call(Callback::Initialize, |e| e.initialize.as_ref(), ())
            .map_err(|f| fault(Callback::Initialize, f))?;
        vm.call(
            Callback::ContextCreate,
            |e| Some(&e.on_context_create),
            (ROOT_CONTEXT_ID, 0),
        )
        .map_err(|f| fault(Callback::ContextCreate, f))?;
        let configs: [(Callback, PickConfigure, usize); 2] = [
            (
                Callback::VmStart,
                |e| e.on_vm_start.as_ref(),
                shared.vm_config.len(),
            ),
            (
                Callback::Configure,
                |e| e.on_configure.as_ref(),
                shared.config.len(),
            ),
        ];
        for (callback, pick, size) in configs {
            let size = u32::try_from(size).unwrap_or(u32::MAX);
            let accepted = vm
                .call(callback, pick, (ROOT_CONTEXT_ID, size))
                .map_err(|f| fault(callback, f))?;
            if accepted == Some(0) {
                return Err(PluginError::Rejected {
                    plugin: name.clone(),
                    callback: callback.name(),
                });
            }
        }
        Ok(vm)
    }

    /// One guarded call into the guest: `pick` chooses the export (borrowed, never cloned:
    /// cloning a `TypedFunc` bumps shared reference counts in the engine's type registry).
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: Callback,
        pick: impl FnOnce(&Exports) -> Option<&TypedFunc<P, R>>,
        params: P,
    ) -> Result<Option<R>, Fault> {
        let Self {
            store,
            exports,
            deadline_ticks,
            metrics,
            local,
            ..
        } = self;
        let Some(func) = pick(exports) else {
            return Ok(None);
        };
        store.set_epoch_deadline(*deadline_ticks);
        let started = local.time_next().then(Instant::now);
        let result = func.call(&mut *store, params);
        local.observe(callback, started);
        result.map(Some).map_err(|e| {
            let fault = classify(e, store.data());
            metrics.fault(callback, &fault);
            fault
        })
    }

    /// Publishes this VM's pending call metrics.
    pub fn flush_metrics(&mut self) {
        self.local.flush();
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// A new HTTP context under the root context.
    pub fn create_http_context(&mut self) -> Result<u32, Fault> {
        let id = self.next_context_id;
        self.next_context_id = self
            .next_context_id
            .wrapping_add(1)
            .max(ROOT_CONTEXT_ID + 1);
        self.call(
            Callback::ContextCreate,
            |e| Some(&e.on_context_create),
            (id, ROOT_CONTEXT_ID),
        )?;
        Ok(id)
    }

    fn action(
        &mut self,
        callback: Callback,
        pick: fn(&Exports) -> Option<&HeadersFn>,
        params: (u32, u32, u32),
    ) -> Result<Action, Fault> {
        self.store.data_mut().effective_context = params.0;
        Ok(match self.call(callback, pick, params)? {
            None | Some(0) => Action::Continue,
            Some(_) => Action::Pause,
        })
    }

    pub fn on_request_headers(
        &mut self,
        context: u32,
        headers: u32,
        end_of_stream: bool,
    ) -> Result<Action, Fault> {
        self.action(
            Callback::RequestHeaders,
            |e| e.on_request_headers.as_ref(),
            (context, headers, u32::from(end_of_stream)),
        )
    }

    pub fn on_request_body(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, Fault> {
        self.action(
            Callback::RequestBody,
            |e| e.on_request_body.as_ref(),
            (context, size, u32::from(end_of_stream)),
        )
    }

    pub fn on_response_headers(
        &mut self,
        context: u32,
        headers: u32,
        end_of_stream: bool,
    ) -> Result<Action, Fault> {
        self.action(
            Callback::ResponseHeaders,
            |e| e.on_response_headers.as_ref(),
            (context, headers, u32::from(end_of_stream)),
        )
    }

    pub fn on_response_body(
        &mut self,
        context: u32,
        size: u32,
        end_of_stream: bool,
    ) -> Result<Action, Fault> {
        self.action(
            Callback::ResponseBody,
            |e| e.on_response_body.as_ref(),
            (context, size, u32::from(end_of_stream)),
        )
    }

    pub fn on_http_call_response(
        &mut self,
        context: u32,
        token: u32,
        headers: u32,
        body: u32,
    ) -> Result<(), Fault> {
        self.store.data_mut().effective_context = context;
        self.call(
            Callback::HttpCallResponse,
            |e| e.on_http_call_response.as_ref(),
            (context, token, headers, body, 0),
        )
        .map(drop)
    }

    /// A callout's answer to `context`: readable (`proxy_get_http_call_response_*`) for the
    /// length of `on_http_call_response` only.
    pub fn on_http_call_answer(
        &mut self,
        context: u32,
        token: u32,
        answer: super::callout::CalloutAnswer,
    ) -> Result<(), Fault> {
        let (headers, body) = answer.sizes();
        self.state_mut().callout_response = answer.response;
        let delivered = self.on_http_call_response(context, token, headers, body);
        self.state_mut().callout_response = None;
        delivered
    }

    pub fn on_tick(&mut self) -> Result<(), Fault> {
        self.store.data_mut().effective_context = ROOT_CONTEXT_ID;
        self.call(Callback::Tick, |e| e.on_tick.as_ref(), ROOT_CONTEXT_ID)
            .map(drop)
    }

    /// The end of an HTTP context's request: `on_done`, then `on_log`, as Envoy orders them
    /// ([`Vm::delete_context`] follows, once the callouts they dispatched are answered).
    pub fn done_and_log(&mut self, context: u32) -> Result<(), Fault> {
        self.store.data_mut().effective_context = context;
        self.call(Callback::Done, |e| e.on_done.as_ref(), context)?;
        self.call(Callback::Log, |e| e.on_log.as_ref(), context)?;
        Ok(())
    }

    /// `on_delete`: the context is gone.
    pub fn delete_context(&mut self, context: u32) -> Result<(), Fault> {
        self.store.data_mut().effective_context = context;
        self.call(Callback::Delete, |e| e.on_delete.as_ref(), context)
            .map(drop)
    }
}
