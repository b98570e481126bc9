//! The WASI (preview 1) subset a plugin gets: clocks, randomness, `fd_write` to stdout/stderr
//! (into the log), and empty arguments and environment. There is no filesystem: every other
//! descriptor is `EBADF`, opening paths is `ENOTCAPABLE`, and `proc_exit` traps the VM.

use std::sync::OnceLock;
use std::time::Instant;

use rand::RngCore;
use wasmtime::Caller;

use super::logging::emit;
use super::timers::now_nanos;
use super::Registrar;
use crate::plugin::memory;
use crate::plugin::state::HostState;

const SUCCESS: u32 = 0;
const EBADF: u32 = 8;
const EINVAL: u32 = 28;
const ENOSYS: u32 = 52;
const ENOTCAPABLE: u32 = 76;

/// The longest line logged for one `fd_write`.
const MAX_LINE: usize = 16 * 1024;

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn read_u32(caller: &Caller<'_, HostState>, ptr: u32) -> wasmtime::Result<u32> {
    let bytes = memory::read(caller, ptr, 4)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn zero_sizes(
    mut caller: Caller<'_, HostState>,
    count_out: u32,
    size_out: u32,
) -> wasmtime::Result<u32> {
    memory::write_u32(&mut caller, count_out, 0)?;
    memory::write_u32(&mut caller, size_out, 0)?;
    Ok(SUCCESS)
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.wasi(
        "args_sizes_get",
        |c: Caller<'_, HostState>, n: u32, s: u32| zero_sizes(c, n, s),
    )?;
    r.wasi(
        "environ_sizes_get",
        |c: Caller<'_, HostState>, n: u32, s: u32| zero_sizes(c, n, s),
    )?;
    r.wasi(
        "args_get",
        |_c: Caller<'_, HostState>, _a: u32, _b: u32| -> u32 { SUCCESS },
    )?;
    r.wasi(
        "environ_get",
        |_c: Caller<'_, HostState>, _a: u32, _b: u32| -> u32 { SUCCESS },
    )?;
    r.wasi(
        "clock_time_get",
        |mut caller: Caller<'_, HostState>,
         clock: u32,
         _precision: u64,
         out: u32|
         -> wasmtime::Result<u32> {
            let now = match clock {
                0 => now_nanos(),
                1..=3 => monotonic_nanos(),
                _ => return Ok(EINVAL),
            };
            memory::write_u64(&mut caller, out, now)?;
            Ok(SUCCESS)
        },
    )?;
    r.wasi(
        "clock_res_get",
        |mut caller: Caller<'_, HostState>, _clock: u32, out: u32| -> wasmtime::Result<u32> {
            memory::write_u64(&mut caller, out, 1_000)?;
            Ok(SUCCESS)
        },
    )?;
    r.wasi(
        "random_get",
        |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<u32> {
            // Filled in place, after the range check: the host never allocates for a guest's
            // length, so a call costs at most what the guest's own memory holds.
            let target = memory::guest_slice_mut(&mut caller, ptr, len)?;
            rand::thread_rng().fill_bytes(target);
            Ok(SUCCESS)
        },
    )?;
    r.wasi(
        "fd_write",
        |mut caller: Caller<'_, HostState>,
         fd: u32,
         iovs: u32,
         count: u32,
         written_out: u32|
         -> wasmtime::Result<u32> {
            if fd != 1 && fd != 2 {
                return Ok(EBADF);
            }
            // The iovec array must lie in guest memory; the line logged is capped, however
            // much (or however often the same bytes) the iovecs name.
            let array_len = count
                .checked_mul(8)
                .ok_or_else(|| wasmtime::Error::msg("fd_write: iovec count overflows"))?;
            memory::read_prefix(&caller, iovs, array_len, 0)?;
            let mut text = Vec::new();
            let mut written: u32 = 0;
            for i in 0..count {
                let ptr = read_u32(&caller, iovs + i * 8)?;
                let len = read_u32(&caller, iovs + i * 8 + 4)?;
                let room = MAX_LINE.saturating_sub(text.len());
                text.extend(memory::read_prefix(&caller, ptr, len, room)?);
                written = written.saturating_add(len);
            }
            let line = String::from_utf8_lossy(&text);
            emit(
                &caller.data().plugin.name,
                if fd == 1 { 2 } else { 3 },
                line.trim_end(),
            );
            memory::write_u32(&mut caller, written_out, written)?;
            Ok(SUCCESS)
        },
    )?;
    r.wasi(
        "fd_read",
        |_c: Caller<'_, HostState>, _fd: u32, _i: u32, _n: u32, _o: u32| -> u32 { EBADF },
    )?;
    r.wasi("fd_close", |_c: Caller<'_, HostState>, _fd: u32| -> u32 {
        EBADF
    })?;
    r.wasi(
        "fd_seek",
        |_c: Caller<'_, HostState>, _fd: u32, _off: i64, _w: u32, _o: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "fd_fdstat_get",
        |_c: Caller<'_, HostState>, _fd: u32, _o: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "fd_fdstat_set_flags",
        |_c: Caller<'_, HostState>, _fd: u32, _f: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "fd_filestat_get",
        |_c: Caller<'_, HostState>, _fd: u32, _o: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "fd_prestat_get",
        |_c: Caller<'_, HostState>, _fd: u32, _o: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "fd_prestat_dir_name",
        |_c: Caller<'_, HostState>, _fd: u32, _p: u32, _l: u32| -> u32 { EBADF },
    )?;
    r.wasi(
        "path_open",
        |_c: Caller<'_, HostState>,
         _fd: u32,
         _df: u32,
         _p: u32,
         _l: u32,
         _o: u32,
         _rb: u64,
         _ri: u64,
         _ff: u32,
         _out: u32|
         -> u32 { ENOTCAPABLE },
    )?;
    r.wasi(
        "path_filestat_get",
        |_c: Caller<'_, HostState>, _fd: u32, _f: u32, _p: u32, _l: u32, _o: u32| -> u32 {
            ENOTCAPABLE
        },
    )?;
    r.wasi(
        "poll_oneoff",
        |_c: Caller<'_, HostState>, _i: u32, _o: u32, _n: u32, _e: u32| -> u32 { ENOSYS },
    )?;
    r.wasi("sched_yield", |_c: Caller<'_, HostState>| -> u32 {
        SUCCESS
    })?;
    r.wasi(
        "proc_exit",
        |caller: Caller<'_, HostState>, code: u32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin `{}` called proc_exit({code})",
                caller.data().plugin.name
            )))
        },
    )
}
