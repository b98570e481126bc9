//! Header maps: the request and response headers of the current exchange (with the HTTP/2-style
//! pseudo-headers Envoy plugins expect: `:method`, `:path`, `:authority`, `:scheme`, `:status`),
//! and a callout's response headers. Trailers are empty maps (Pingora's HTTP/1 has none).
//! Maps are read and written in the ABI's pair serialization (`pairs.rs`).

use std::borrow::Cow;

use http::header::HeaderValue;
use wasmtime::Caller;

use super::{status, Registrar};
use crate::plugin::state::HostState;
use crate::plugin::{memory, pairs};

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const CALL_RESPONSE_HEADERS: u32 = 6;

/// Every (name, value) of map `map`, pseudo-headers first, borrowed from the state (a map
/// read serializes them straight from here); empty when not available now.
pub fn pairs_of(state: &HostState, map: u32) -> Vec<(&[u8], &[u8])> {
    match map {
        REQUEST_HEADERS if state.request_live => {
            let headers = &state.request_headers.headers;
            let mut out = Vec::with_capacity(REQUEST_PSEUDO.len() + headers.len());
            for name in REQUEST_PSEUDO {
                let value = pseudo_value(state, REQUEST_HEADERS, name).unwrap_or_default();
                out.push((name.as_bytes(), value));
            }
            out.extend(
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            );
            out
        }
        RESPONSE_HEADERS if state.response_live => {
            let response = &state.response_headers;
            let mut out = Vec::with_capacity(1 + response.headers.len());
            out.push((&b":status"[..], response.status.as_str().as_bytes()));
            out.extend(
                response
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            );
            out
        }
        CALL_RESPONSE_HEADERS => state.callout_response.as_ref().map_or_else(Vec::new, |r| {
            r.headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                .collect()
        }),
        _ => Vec::new(),
    }
}

/// The request pseudo-headers, in the order Envoy gives them.
const REQUEST_PSEUDO: [&str; 4] = [":method", ":path", ":authority", ":scheme"];

/// One pseudo-header (`name` with its colon), computed without building the whole map.
fn pseudo_value<'s>(state: &'s HostState, map: u32, name: &str) -> Option<&'s [u8]> {
    match map {
        REQUEST_HEADERS if state.request_live => {
            let request = &state.request_headers;
            let value = match name {
                ":method" => request.method.as_str().as_bytes(),
                ":path" => request
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
                ":authority" => request
                    .headers
                    .get(http::header::HOST)
                    .map(|h| h.as_bytes())
                    .or_else(|| request.uri.authority().map(|a| a.as_str().as_bytes()))
                    .unwrap_or_default(),
                ":scheme" => b"http",
                _ => return None,
            };
            Some(value)
        }
        RESPONSE_HEADERS if state.response_live && name == ":status" => {
            Some(state.response_headers.status.as_str().as_bytes())
        }
        _ => None,
    }
}

/// `name` in lower case, allocating only when it is not already.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The value of one header (first one when repeated), pseudo-headers included.
fn value_of(state: &HostState, map: u32, name: &str) -> Option<Vec<u8>> {
    let name = lowercase(name);
    if map == CALL_RESPONSE_HEADERS {
        return pairs_of(state, map)
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.to_vec());
    }
    if name.starts_with(':') {
        return pseudo_value(state, map, &name).map(<[u8]>::to_vec);
    }
    let headers = match map {
        REQUEST_HEADERS if state.request_live => &state.request_headers.headers,
        RESPONSE_HEADERS if state.response_live => &state.response_headers.headers,
        _ => return None,
    };
    headers.get(name.as_ref()).map(|v| v.as_bytes().to_vec())
}

/// How a write changes a header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Add,
    Replace,
    Remove,
}

/// Applies one edit; a bad name or value is logged and ignored (the SDK accepts only Ok).
fn edit(state: &mut HostState, map: u32, name: &str, value: &[u8], how: Edit) {
    let name = lowercase(name);
    let result = match (map, name.as_ref()) {
        (REQUEST_HEADERS, ":path") if state.request_live && how != Edit::Remove => {
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<http::Uri>().ok())
            {
                Some(uri) => {
                    state.request_headers.set_uri(uri);
                    Ok(())
                }
                None => Err("not a valid path".to_string()),
            }
        }
        (REQUEST_HEADERS, ":method") if state.request_live && how != Edit::Remove => {
            match http::Method::from_bytes(value) {
                Ok(method) => {
                    state.request_headers.set_method(method);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        (RESPONSE_HEADERS, ":status") if state.response_live && how != Edit::Remove => {
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u16>().ok())
            {
                Some(code) => state
                    .response_headers
                    .set_status(code)
                    .map_err(|e| e.to_string()),
                None => Err("not a status code".to_string()),
            }
        }
        (_, n) if n.starts_with(':') => Err("pseudo-header cannot be changed this way".to_string()),
        (REQUEST_HEADERS, _) if state.request_live => {
            apply(&mut state.request_headers, &name, value, how)
        }
        (RESPONSE_HEADERS, _) if state.response_live => {
            apply(&mut state.response_headers, &name, value, how)
        }
        _ => Err("this header map is not available in this callback".to_string()),
    };
    if let Err(problem) = result {
        tracing::warn!(target: "plugin", plugin = %state.plugin.name, map, header = %name, %problem, "header edit ignored");
    }
}

/// Pingora's header types keep a case map in step with the values: edit through their API.
/// Names go in as a (lower-case) `String`: Pingora keeps it as the name's wire case and
/// parses it once (checking it); a `HeaderName` would be parsed, then copied again for the
/// case map, then parsed again. Removal looks the borrowed name up, building nothing.
trait EditHeaders {
    fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<bool>;
    fn remove(&mut self, name: &str);
}

/// Both header types offer the same editing methods.
macro_rules! edit_headers_for {
    ($($header:ty),*) => {$(
        impl EditHeaders for $header {
            fn insert(&mut self, name: String, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: String, value: HeaderValue) -> pingora::Result<bool> {
                self.append_header(name, value)
            }
            fn remove(&mut self, name: &str) {
                self.remove_header(name);
            }
        }
    )*};
}

edit_headers_for!(pingora::http::RequestHeader, pingora::http::ResponseHeader);

fn apply(
    headers: &mut impl EditHeaders,
    name: &str,
    value: &[u8],
    how: Edit,
) -> Result<(), String> {
    if how == Edit::Remove {
        headers.remove(name);
        return Ok(());
    }
    let value = HeaderValue::from_bytes(value).map_err(|e| e.to_string())?;
    let name = name.to_owned();
    match how {
        Edit::Add => headers.append(name, value).map(|_| ()),
        _ => headers.insert(name, value),
    }
    .map_err(|e| e.to_string())
}

pub fn link(r: &mut Registrar<'_>) -> wasmtime::Result<()> {
    r.env(
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>,
         map: u32,
         data_out: u32,
         size_out: u32|
         -> wasmtime::Result<u32> {
            let bytes = pairs::serialize(&pairs_of(caller.data(), map));
            memory::give(&mut caller, &bytes, data_out, size_out)?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, map: u32, size_out: u32| -> wasmtime::Result<u32> {
            let size = pairs::serialize(&pairs_of(caller.data(), map)).len();
            memory::write_u32(&mut caller, size_out, u32::try_from(size)?)?;
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>,
         map: u32,
         ptr: u32,
         len: u32|
         -> wasmtime::Result<u32> {
            let bytes = memory::read(&caller, ptr, len)?;
            let new_pairs = pairs::deserialize(&bytes)?;
            let state = caller.data_mut();
            let old: Vec<String> = pairs_of(state, map)
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            for name in old.iter().filter(|n| !n.starts_with(':')) {
                edit(state, map, name, b"", Edit::Remove);
            }
            for (k, v) in new_pairs {
                let name = String::from_utf8_lossy(&k).into_owned();
                let how = if name.starts_with(':') {
                    Edit::Replace
                } else {
                    Edit::Add
                };
                edit(state, map, &name, &v, how);
            }
            Ok(status::OK)
        },
    )?;
    r.env(
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map: u32,
         key: u32,
         key_len: u32,
         data_out: u32,
         size_out: u32|
         -> wasmtime::Result<u32> {
            let value = memory::with_guest(&mut caller, [(key, key_len)], |[name], state| {
                value_of(state, map, &memory::text(name))
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
    for (name, how) in [
        ("proxy_replace_header_map_value", Edit::Replace),
        ("proxy_add_header_map_value", Edit::Add),
    ] {
        r.env(
            name,
            move |mut caller: Caller<'_, HostState>,
                  map: u32,
                  key: u32,
                  key_len: u32,
                  value: u32,
                  value_len: u32|
                  -> wasmtime::Result<u32> {
                memory::with_guest(
                    &mut caller,
                    [(key, key_len), (value, value_len)],
                    |[name, value], state| edit(state, map, &memory::text(name), value, how),
                )?;
                Ok(status::OK)
            },
        )?;
    }
    r.env(
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map: u32,
         key: u32,
         key_len: u32|
         -> wasmtime::Result<u32> {
            memory::with_guest(&mut caller, [(key, key_len)], |[name], state| {
                edit(state, map, &memory::text(name), b"", Edit::Remove)
            })?;
            Ok(status::OK)
        },
    )
}
