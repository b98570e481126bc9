//! Time and timers: the wall clock in nanoseconds, and the root context's tick period (the
//! host calls `proxy_on_tick` at that period; 0 stops it).

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::state::HostState;

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, out: u32| -> wasmtime::Result<u32> {
            memory::write_u64(&mut caller, out, now_nanos())?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_set_tick_period_milliseconds",
        |caller: Caller<'_, HostState>, period: u32| -> u32 {
            caller
                .data()
                .tick_period_ms
                .store(period, std::sync::atomic::Ordering::Relaxed);
            status::OK
        },
    )
}
