//! Buffers: the request or response body the current body callback sees (buffered whole when
//! the plugin paused until end of stream), a callout's response body, and the VM and plugin
//! configurations. Writes replace a byte range (`start`, `size`) with new bytes.

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::state::{BodyKind, HostState};

const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const CALL_RESPONSE_BODY: u32 = 4;
const VM_CONFIGURATION: u32 = 6;
const PLUGIN_CONFIGURATION: u32 = 7;

fn body_kind(buffer: u32) -> Option<BodyKind> {
    match buffer {
        REQUEST_BODY => Some(BodyKind::Request),
        RESPONSE_BODY => Some(BodyKind::Response),
        _ => None,
    }
}

/// Buffer `buffer` whole; `None` when it is not available in this callback.
fn whole(state: &HostState, buffer: u32) -> Option<&[u8]> {
    Some(match buffer {
        VM_CONFIGURATION => &state.plugin.vm_config,
        PLUGIN_CONFIGURATION => &state.plugin.config,
        CALL_RESPONSE_BODY => &state.callout_response.as_ref()?.body,
        other => {
            let kind = body_kind(other)?;
            match &state.exchange.body {
                Some((k, bytes)) if *k == kind => bytes.as_ref(),
                _ => return None,
            }
        }
    })
}

/// A copy of the part of buffer `buffer` in `[start, start + max)`.
fn read(state: &HostState, buffer: u32, start: usize, max: usize) -> Option<Vec<u8>> {
    let whole = whole(state, buffer)?;
    let start = start.min(whole.len());
    let end = start.saturating_add(max).min(whole.len());
    Some(whole[start..end].to_vec())
}

/// The configurations always exist, empty or not: an empty one reads as an empty buffer, not
/// NotFound (the AssemblyScript SDK treats any status but Ok there as fatal).
fn always_present(buffer: u32) -> bool {
    matches!(buffer, VM_CONFIGURATION | PLUGIN_CONFIGURATION)
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         buffer: u32,
         start: u32,
         max: u32,
         data_out: u32,
         size_out: u32|
         -> wasmtime::Result<u32> {
            match read(caller.data(), buffer, start as usize, max as usize) {
                Some(bytes) if !bytes.is_empty() || always_present(buffer) => {
                    memory::give(&mut caller, &bytes, data_out, size_out)?;
                    Ok(status::OK)
                }
                _ => Ok(status::NOT_FOUND),
            }
        },
    )?;
    r.env(
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>,
         buffer: u32,
         length_out: u32,
         flags_out: u32|
         -> wasmtime::Result<u32> {
            let Some(length) = whole(caller.data(), buffer).map(<[u8]>::len) else {
                return Ok(status::NOT_FOUND);
            };
            memory::write_u32(&mut caller, length_out, u32::try_from(length)?)?;
            memory::write_u32(&mut caller, flags_out, 0)?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>, buffer: u32, start: u32, size: u32, data: u32, len: u32| -> wasmtime::Result<u32> {
            let bytes = memory::read(&caller, data, len)?;
            let Some(kind) = body_kind(buffer) else {
                // Only bodies are writable; the SDK accepts nothing but Ok here.
                tracing::warn!(target: "plugin", plugin = %caller.data().plugin.name, buffer, "write to a read-only buffer ignored");
                return Ok(status::OK);
            };
            let exchange = &mut caller.data_mut().exchange;
            let received = exchange.body.take();
            let edited = match &received {
                Some((k, body)) if *k == kind => {
                    let mut edited = body.to_vec();
                    let start = (start as usize).min(edited.len());
                    let end = start.saturating_add(size as usize).min(edited.len());
                    edited.splice(start..end, bytes);
                    edited
                }
                _ => bytes,
            };
            exchange.body = Some((kind, edited.into()));
            if let Some((_, body)) = received {
                exchange.body_before_edit.get_or_insert(body);
            }
            Ok(status::OK)
        },
    )
}
