//! Context management: `proxy_set_effective_context` (which context later calls act on) and
//! `proxy_done` (a root context finished its shutdown work: nothing to wait for here).

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::state::HostState;

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, context: u32| -> u32 {
            caller.data_mut().effective_context = context;
            status::OK
        },
    )?;
    r.env("proxy_done", |_caller: Caller<'_, HostState>| -> u32 {
        status::OK
    })
}
