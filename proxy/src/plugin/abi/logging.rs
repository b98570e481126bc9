//! Logging: `proxy_log` into `tracing` (target `plugin`, with the plugin's name), and
//! `proxy_get_log_level` from the level `tracing` currently lets through.

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::state::HostState;

fn current_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

/// Logs one line of plugin output at the ABI's `level`.
pub fn emit(plugin: &str, level: u32, message: &str) {
    match level {
        0 => tracing::trace!(target: "plugin", plugin, "{message}"),
        1 => tracing::debug!(target: "plugin", plugin, "{message}"),
        2 => tracing::info!(target: "plugin", plugin, "{message}"),
        3 => tracing::warn!(target: "plugin", plugin, "{message}"),
        _ => tracing::error!(target: "plugin", plugin, "{message}"),
    }
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_log",
        |caller: Caller<'_, HostState>, level: u32, ptr: u32, len: u32| -> wasmtime::Result<u32> {
            let message = memory::read_string(&caller, ptr, len)?;
            emit(&caller.data().plugin.name, level, &message);
            Ok(status::OK)
        },
    )?;
    // AssemblyScript's runtime calls `abort(message, file, line, column)` on a failed
    // assertion or an unreachable path: the VM faults like on any trap.
    r.env(
        "abort",
        |caller: Caller<'_, HostState>,
         _message: u32,
         _file: u32,
         line: u32,
         column: u32|
         -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin `{}` called abort (line {line}, column {column})",
                caller.data().plugin.name
            )))
        },
    )?;
    r.env(
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, out: u32| -> wasmtime::Result<u32> {
            memory::write_u32(&mut caller, out, current_level())?;
            Ok(status::OK)
        },
    )
}
