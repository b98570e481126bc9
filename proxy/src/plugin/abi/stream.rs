//! Stream control: `proxy_send_local_response` (the host answers instead of proxying, from any
//! request or response phase), `proxy_continue_stream` (resume a paused request or response),
//! `proxy_close_stream` (treated as a request to end it with what was sent).

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::state::{HostState, LocalResponse};
use crate::plugin::{memory, pairs};

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status_code: u32,
         details: u32,
         details_len: u32,
         body: u32,
         body_len: u32,
         headers: u32,
         headers_len: u32,
         _grpc_status: i32|
         -> wasmtime::Result<u32> {
            let details = memory::read_string(&caller, details, details_len)?;
            let body = memory::read(&caller, body, body_len)?;
            let headers = pairs::deserialize(&memory::read(&caller, headers, headers_len)?)?
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                .collect();
            let status_code = u16::try_from(status_code)
                .ok()
                .filter(|c| (200..=599).contains(c))
                .unwrap_or(500);
            caller.data_mut().exchange.local_response = Some(LocalResponse {
                status: status_code,
                details,
                headers,
                body,
            });
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, _stream: u32| -> u32 {
            caller.data_mut().exchange.resumed = true;
            status::OK
        },
    )?;
    r.env(
        "proxy_close_stream",
        |caller: Caller<'_, HostState>, stream: u32| -> u32 {
            tracing::debug!(target: "plugin", plugin = %caller.data().plugin.name, stream, "close_stream: the request ends with what was sent");
            status::OK
        },
    )
}
