//! The host functions of proxy-wasm ABI v0.2.1, one file per spec section, each adding its
//! functions to the linker. Statuses follow the spec; the ones returned are always among those
//! the Rust SDK (0.2.x) accepts for that call, since it panics on any other. Unsupported areas
//! (`unsupported.rs`) are linked too, returning documented, tolerated statuses.

mod buffers;
mod context;
mod foreign;
mod headers;
mod http_call;
mod logging;
mod metrics;
mod properties;
mod shared_data;
mod stream;
mod timers;
mod unsupported;
mod wasi;

use wasmtime::{IntoFunc, Linker};

use super::state::HostState;

/// ABI statuses (`proxy_status_t`).
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
}

/// Adds functions to the linker and remembers their names (for the import check).
pub(crate) struct Registrar<'a> {
    linker: &'a mut Linker<HostState>,
    provided: Vec<(&'static str, &'static str)>,
}

impl Registrar<'_> {
    fn add<Params, Results>(
        &mut self,
        module: &'static str,
        name: &'static str,
        func: impl IntoFunc<HostState, Params, Results>,
    ) -> wasmtime::Result<()> {
        self.linker.func_wrap(module, name, func)?;
        self.provided.push((module, name));
        Ok(())
    }

    /// An `env` (proxy-wasm) function.
    pub fn env<Params, Results>(
        &mut self,
        name: &'static str,
        func: impl IntoFunc<HostState, Params, Results>,
    ) -> wasmtime::Result<()> {
        self.add("env", name, func)
    }

    /// A WASI preview 1 function, under both of its module names: `wasi_snapshot_preview1`
    /// and the older `wasi_unstable` (which AssemblyScript SDK plugins import).
    pub fn wasi<Params, Results>(
        &mut self,
        name: &'static str,
        func: impl IntoFunc<HostState, Params, Results> + Clone,
    ) -> wasmtime::Result<()> {
        self.add("wasi_snapshot_preview1", name, func.clone())?;
        self.add("wasi_unstable", name, func)
    }
}

/// Links every host function; returns the (module, name) pairs provided.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<Vec<(&'static str, &'static str)>> {
    let mut r = Registrar {
        linker,
        provided: Vec::new(),
    };
    logging::link(&mut r)?;
    context::link(&mut r)?;
    timers::link(&mut r)?;
    buffers::link(&mut r)?;
    headers::link(&mut r)?;
    properties::link(&mut r)?;
    stream::link(&mut r)?;
    http_call::link(&mut r)?;
    shared_data::link(&mut r)?;
    foreign::link(&mut r)?;
    metrics::link(&mut r)?;
    unsupported::link(&mut r)?;
    wasi::link(&mut r)?;
    Ok(r.provided)
}
