//! Properties: a path of NUL-separated segments. Request attributes come from the exchange
//! (`request.path`, `request.url_path`, `request.host`, `request.method`, `request.scheme`,
//! `request.id`, `request.query`, `request.headers.<name>`), the peer from the connection
//! (`source.address` as `ip:port`, `source.port`) and its TLS, as Envoy names them
//! (`connection.mtls` as one byte 0/1, `connection.tls_version` (`TLSv1.3`),
//! `connection.requested_server_name`, `connection.subject_peer_certificate` in RFC 2253; not
//! found on plain HTTP), `request.scheme` (`https` on TLS), `request.protocol` (`HTTP/1.1`,
//! `HTTP/2`), the response status (`response.code`), the
//! plugin's identity (`plugin_name`, `plugin_root_id`). Numbers are 8-byte little-endian
//! integers, as Envoy encodes them. Any other path is a custom property: plugins may set it
//! and later plugins of the chain read it (e.g. the client id auth hands to the rate limiter).

use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::memory;
use crate::plugin::state::HostState;

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// The value of property `raw` (the ABI's NUL-separated path), if known.
pub fn lookup(state: &HostState, raw: &[u8]) -> Option<Vec<u8>> {
    let mut segments = [""; 4];
    let mut count = 0;
    for part in raw.split(|b| *b == 0) {
        // Longer paths, and paths that are not UTF-8, can only be custom properties.
        let Some(slot) = segments.get_mut(count) else {
            return custom(state, raw);
        };
        let Ok(part) = std::str::from_utf8(part) else {
            return custom(state, raw);
        };
        *slot = part;
        count += 1;
    }
    let request = state.request_live.then_some(&state.request_headers);
    let exchange = &state.exchange;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match &segments[..count] {
        ["plugin_name"] => text(&state.plugin.name),
        ["plugin_root_id"] => text(&state.plugin.root_id),
        ["request", "path"] => text(request?.uri.path_and_query().map_or("/", |p| p.as_str())),
        ["request", "url_path"] => text(request?.uri.path()),
        ["request", "query"] => text(request?.uri.query().unwrap_or_default()),
        ["request", "host"] => request?
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes().to_vec())
            .or_else(|| text(request?.uri.host().unwrap_or_default())),
        ["request", "method"] => text(request?.method.as_str()),
        ["request", "scheme"] => text(if exchange.tls.is_some() {
            "https"
        } else {
            "http"
        }),
        ["request", "protocol"] => text(crate::hygiene::protocol_name(request?.version)),
        ["request", "id"] => text(&exchange.request_id),
        ["request", "headers", name] => request?.headers.get(*name).map(|v| v.as_bytes().to_vec()),
        ["source", "address"] => exchange.client.map(|a| a.to_string().into_bytes()),
        ["source", "port"] => exchange.client.map(|a| int(i64::from(a.port()))),
        ["connection", "mtls"] => exchange
            .tls
            .as_ref()
            .map(|tls| vec![u8::from(tls.peer_subject.is_some())]),
        ["connection", "tls_version"] => exchange.tls.as_ref().and_then(|t| text(t.version)),
        ["connection", "requested_server_name"] => exchange
            .tls
            .as_ref()
            .and_then(|t| t.server_name.as_deref())
            .and_then(text),
        ["connection", "subject_peer_certificate"] => exchange
            .tls
            .as_ref()
            .and_then(|t| t.peer_subject.as_deref())
            .and_then(text),
        ["response", "code"] => state
            .response_live
            .then(|| state.response_headers.status.as_u16())
            .or(exchange.response_code)
            .map(|c| int(i64::from(c))),
        _ => custom(state, raw),
    }
}

/// A property a plugin set, by its raw path (no key is built per lookup).
fn custom(state: &HostState, raw: &[u8]) -> Option<Vec<u8>> {
    state.exchange.properties.get(raw).cloned()
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>,
         path: u32,
         len: u32,
         data_out: u32,
         size_out: u32|
         -> wasmtime::Result<u32> {
            let value = memory::with_guest(&mut caller, [(path, len)], |[raw], state| {
                lookup(state, raw)
            })?;
            match value {
                Some(value) => {
                    memory::give(&mut caller, &value, data_out, size_out)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    r.env(
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         path: u32,
         len: u32,
         value: u32,
         value_len: u32|
         -> wasmtime::Result<u32> {
            let key = memory::read(&caller, path, len)?;
            let value = memory::read(&caller, value, value_len)?;
            caller.data_mut().exchange.properties.insert(key, value);
            Ok(status::OK)
        },
    )
}
