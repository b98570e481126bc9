//! Callouts: `proxy_http_call` to an upstream named in the YAML and allowed for this plugin.
//! The host records the request; once the callback returns, the chain runs it on the upstream's
//! connection pool and delivers `proxy_on_http_call_response`. Headers must carry `:method`,
//! `:path` and `:authority` (as in Envoy); an unknown or disallowed upstream is `BadArgument`.

use std::time::Duration;

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::state::{CalloutRequest, HostState};
use crate::plugin::{memory, pairs};

/// Longest callout timeout honoured (and the default when the plugin passes 0).
pub const MAX_CALLOUT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         upstream: u32,
         upstream_len: u32,
         headers: u32,
         headers_len: u32,
         body: u32,
         body_len: u32,
         _trailers: u32,
         _trailers_len: u32,
         timeout_ms: u32,
         token_out: u32|
         -> wasmtime::Result<u32> {
            let upstream = memory::read_string(&caller, upstream, upstream_len)?;
            let headers = pairs::deserialize(&memory::read(&caller, headers, headers_len)?)?;
            let body = memory::read(&caller, body, body_len)?;
            let plugin = caller.data().plugin.clone();
            if !plugin.allowed_upstreams.iter().any(|u| u == &upstream) {
                tracing::warn!(target: "plugin", plugin = %plugin.name, %upstream, "callout to an upstream not in allowed_upstreams");
                return Ok(status::BAD_ARGUMENT);
            }
            let has = |name: &[u8]| headers.iter().any(|(k, _)| k.as_slice() == name);
            if !(has(b":method") && has(b":path") && has(b":authority")) {
                return Ok(status::BAD_ARGUMENT);
            }
            let timeout = match timeout_ms {
                0 => MAX_CALLOUT_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)).min(MAX_CALLOUT_TIMEOUT),
            };
            let state = caller.data_mut();
            let token = state.next_callout_token;
            state.next_callout_token = state.next_callout_token.wrapping_add(1).max(1);
            state.callouts.push(CalloutRequest {
                token,
                upstream,
                headers,
                body,
                timeout,
            });
            memory::write_u32(&mut caller, token_out, token)?;
            Ok(status::OK)
        },
    )
}
