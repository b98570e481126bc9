//! Shared data: the host-wide store (`plugin/shared_data.rs`) behind `proxy_get_shared_data` and
//! `proxy_set_shared_data`, with CAS. A value too large for the store, or a write into a store
//! full of entries that may not be evicted, is refused as a CAS mismatch (the only failure the
//! SDK accepts for a write).

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::shared_data::SetError;
use crate::plugin::state::HostState;

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         key: u32,
         key_len: u32,
         data_out: u32,
         size_out: u32,
         cas_out: u32|
         -> wasmtime::Result<u32> {
            let found = memory::with_guest(&mut caller, [(key, key_len)], |[key], state| {
                state.plugin.shared_data.get(&memory::text(key))
            })?;
            match found {
                Some((value, cas)) => {
                    memory::give(&mut caller, &value, data_out, size_out)?;
                    memory::write_u32(&mut caller, cas_out, cas)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    r.env(
        "proxy_set_shared_data",
        |mut caller: Caller<'_, HostState>, key: u32, key_len: u32, value: u32, value_len: u32, cas: u32| -> wasmtime::Result<u32> {
            memory::with_guest(&mut caller, [(key, key_len), (value, value_len)], |[key, value], state| {
                let key = memory::text(key);
                let plugin = &state.plugin;
                match plugin.shared_data.set(&key, value, cas) {
                Ok(()) => status::OK,
                Err(SetError::CasMismatch) => status::CAS_MISMATCH,
                Err(SetError::TooLarge) => {
                    tracing::warn!(target: "plugin", plugin = %plugin.name, %key, bytes = value.len(), "shared data value larger than the store");
                    status::CAS_MISMATCH
                }
                Err(SetError::Full) => {
                    tracing::debug!(target: "plugin", plugin = %plugin.name, %key, "shared data full of live TTL entries: write refused");
                    status::CAS_MISMATCH
                }
            }
            })
        },
    )
}
