//! What this host does not offer, linked so every SDK plugin loads, with statuses the SDK
//! tolerates (it panics on any other, and never sees 6 or 12 here):
//!
//! | function | returns |
//! |---|---|
//! | `proxy_grpc_call`, `proxy_grpc_stream` | InternalFailure (10) |
//! | `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close` | NotFound (1) |
//! | `proxy_register_shared_queue` | Ok with an id no queue answers to |
//! | `proxy_resolve_shared_queue` | NotFound (1) |
//! | `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue` | NotFound (1) |
//! | `proxy_get_status` | Ok, code 2 (UNKNOWN), empty message |

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::state::HostState;

/// The id handed out for registered queues (nothing is ever delivered to it).
const INERT_QUEUE: u32 = u32::MAX;

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_grpc_call",
        |_c: Caller<'_, HostState>,
         _a: u32,
         _b: u32,
         _c2: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32,
         _j: u32,
         _k: u32,
         _l: u32|
         -> u32 { status::INTERNAL_FAILURE },
    )?;
    r.env(
        "proxy_grpc_stream",
        |_c: Caller<'_, HostState>,
         _a: u32,
         _b: u32,
         _c2: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32|
         -> u32 { status::INTERNAL_FAILURE },
    )?;
    r.env(
        "proxy_grpc_send",
        |_c: Caller<'_, HostState>, _token: u32, _data: u32, _len: u32, _end: u32| -> u32 {
            status::NOT_FOUND
        },
    )?;
    r.env(
        "proxy_grpc_cancel",
        |_c: Caller<'_, HostState>, _token: u32| -> u32 { status::NOT_FOUND },
    )?;
    r.env(
        "proxy_grpc_close",
        |_c: Caller<'_, HostState>, _token: u32| -> u32 { status::NOT_FOUND },
    )?;
    r.env(
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>,
         _name: u32,
         _len: u32,
         id_out: u32|
         -> wasmtime::Result<u32> {
            memory::write_u32(&mut caller, id_out, INERT_QUEUE)?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_resolve_shared_queue",
        |_c: Caller<'_, HostState>,
         _vm: u32,
         _vm_len: u32,
         _name: u32,
         _len: u32,
         _id_out: u32|
         -> u32 { status::NOT_FOUND },
    )?;
    r.env(
        "proxy_enqueue_shared_queue",
        |_c: Caller<'_, HostState>, _id: u32, _data: u32, _len: u32| -> u32 { status::NOT_FOUND },
    )?;
    r.env(
        "proxy_dequeue_shared_queue",
        |_c: Caller<'_, HostState>, _id: u32, _data_out: u32, _size_out: u32| -> u32 {
            status::NOT_FOUND
        },
    )?;
    r.env(
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>,
         code_out: u32,
         message_out: u32,
         size_out: u32|
         -> wasmtime::Result<u32> {
            memory::write_u32(&mut caller, code_out, 2)?;
            memory::give(&mut caller, b"", message_out, size_out)?;
            Ok(status::OK)
        },
    )
}
