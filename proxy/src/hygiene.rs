//! Request hygiene at the proxy boundary: request ids, W3C `traceparent` (created or
//! propagated with a new parent id), `X-Forwarded-*`, and hop-by-hop header removal; and the
//! upstream request they make ([`prepare_upstream_request`]).

use http::header::{HeaderMap, HeaderName, CONNECTION};
use rand::Rng;

/// The client's IP address.
pub fn client_addr(session: &pingora::proxy::Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// An HTTP version as the access log and the `request.protocol` property name it.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The client's IP address, as `X-Forwarded-For` names it.
pub fn client_ip(session: &pingora::proxy::Session) -> Option<String> {
    client_addr(session).map(|ip| ip.to_string())
}

/// HTTP/2 names the host in `:authority` (the request URI), not in a `Host` header: give the
/// request the `Host` an HTTP/1.1 client would have sent (RFC 9113 §8.3.1) and an origin-form
/// target, so routing, cache keys, plugins and the upstream see one spelling whatever the
/// client's HTTP version.
pub fn host_from_authority(request: &mut pingora::http::RequestHeader) -> pingora::Result<()> {
    let Some(authority) = request.uri.authority().cloned() else {
        return Ok(());
    };
    if !request.headers.contains_key(http::header::HOST) {
        request.insert_header(http::header::HOST, authority.as_str())?;
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = request.uri.path_and_query().cloned();
    if let Ok(origin_form) = http::Uri::from_parts(parts) {
        request.set_uri(origin_form);
    }
    Ok(())
}

/// What the upstream request is told about the client request.
#[derive(Debug)]
pub struct Forwarded<'a> {
    pub client: String,
    pub request_id: &'a str,
    /// The upstream's own `Host`, when it wants one.
    pub host: Option<&'a str>,
    /// The client spoke TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// Plugins may rewrite the request body: frame it by what is actually sent (chunked).
    pub rewritable_body: bool,
}

/// Host, `X-Forwarded-*`, `traceparent`, the request id; hop-by-hop headers removed.
pub fn prepare_upstream_request(
    request: &mut pingora::http::RequestHeader,
    forwarded: &Forwarded<'_>,
) -> pingora::Result<()> {
    for name in hop_by_hop_present(&request.headers) {
        request.remove_header(&name);
    }
    if forwarded.rewritable_body {
        request.remove_header(&http::header::CONTENT_LENGTH);
        request.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    let xff = forwarded_for(
        request
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        &forwarded.client,
    );
    request.insert_header("x-forwarded-for", xff)?;
    request.insert_header(
        "x-forwarded-proto",
        if forwarded.https { "https" } else { "http" },
    )?;
    if let Some(host) = request.headers.get(http::header::HOST).cloned() {
        request.insert_header("x-forwarded-host", host)?;
    }
    let incoming = request
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    request.insert_header("traceparent", traceparent(incoming))?;
    request.insert_header("x-request-id", forwarded.request_id)?;
    if let Some(host) = forwarded.host {
        request.insert_header(http::header::HOST, host)?;
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy. `Transfer-Encoding` is left
/// to Pingora, which owns message framing on each side.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("upgrade"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
];

/// The hop-by-hop headers `headers` holds, fixed or named by its `Connection` header: one pass
/// over the names present (usually none are hop-by-hop: no allocation, nothing to remove)
/// instead of a removal, two hash lookups in Pingora, per name that might be there.
pub fn hop_by_hop_present(headers: &HeaderMap) -> Vec<HeaderName> {
    let listed = connection_listed(headers);
    headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || listed.contains(name))
        .cloned()
        .collect()
}

/// The headers the `Connection` header names: hop-by-hop too (usually none, so no allocation).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|name| !HOP_BY_HOP.contains(name))
        .collect()
}

/// 32 lowercase hex digits (what `format!("{:032x}")` gives, without the formatting machinery).
fn hex_id(value: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes: Vec<u8> = (0..32)
        .rev()
        .map(|i| DIGITS[((value >> (i * 4)) & 0xf) as usize])
        .collect();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Keeps a well-formed client request id (1-64 of `[A-Za-z0-9._-]`), else makes a new one.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b)) =>
        {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => hex_id(rand::thread_rng().gen::<u128>()),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A `traceparent` for the upstream request: the client's trace id and flags with a new parent
/// id for this hop, or a new trace when the client sent none (or an invalid one).
pub fn traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::thread_rng();
    let span: u64 = rng.gen_range(1..=u64::MAX);
    if let Some(value) = incoming {
        let parts: Vec<&str> = value.trim().split('-').collect();
        if let [version, trace, parent, flags, ..] = parts[..] {
            let valid = is_hex(version, 2)
                && version != "ff"
                && (version != "00" || parts.len() == 4)
                && is_hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && is_hex(parent, 16)
                && parent.bytes().any(|b| b != b'0')
                && is_hex(flags, 2);
            if valid {
                return format!("00-{trace}-{span:016x}-{flags}");
            }
        }
    }
    let trace: u128 = rng.gen_range(1..=u128::MAX);
    format!("00-{trace:032x}-{span:016x}-00")
}

/// `X-Forwarded-For` with the client appended to what earlier proxies recorded.
pub fn forwarded_for(existing: Option<&str>, client: &str) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(chain) => format!("{chain}, {client}"),
        None => client.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn an_h2_authority_becomes_the_host_and_the_target_origin_form() {
        let absolute = |uri: &str| {
            let mut request = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
            request.set_uri(uri.parse().unwrap());
            request
        };
        let mut h2 = absolute("https://shop.example:8443/api/v1/products?category=polo");
        h2.set_version(http::Version::HTTP_2);
        host_from_authority(&mut h2).unwrap();
        assert_eq!(h2.headers["host"], "shop.example:8443");
        assert_eq!(h2.uri.to_string(), "/api/v1/products?category=polo");

        // HTTP/1.1 in origin form is left alone; a Host header is never replaced.
        let mut h1 = pingora::http::RequestHeader::build("GET", b"/x", None).unwrap();
        h1.insert_header("host", "a.example").unwrap();
        host_from_authority(&mut h1).unwrap();
        assert_eq!(h1.headers["host"], "a.example");
        let mut both = absolute("https://b.example/x");
        both.insert_header("host", "a.example").unwrap();
        host_from_authority(&mut both).unwrap();
        assert_eq!(both.headers["host"], "a.example");
        assert_eq!(both.uri.to_string(), "/x");
    }

    #[test]
    fn new_request_ids_are_32_hex_digits() {
        assert_eq!(hex_id(0xabc), format!("{:032x}", 0xabc));
        assert_eq!(hex_id(u128::MAX), "f".repeat(32));
        let id = request_id(None);
        assert!(is_hex(&id, 32), "{id}");
    }

    #[test]
    fn traceparent_propagates_the_trace_and_replaces_the_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = traceparent(Some(incoming));
        let parts: Vec<&str> = out.split('-').collect();
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert!(is_hex(parts[2], 16));
        assert_eq!(parts[3], "01");
    }

    #[test]
    fn invalid_or_missing_traceparent_starts_a_new_trace() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ] {
            let out = traceparent(bad);
            let parts: Vec<&str> = out.split('-').collect();
            assert_eq!(parts.len(), 4, "{out}");
            assert!(is_hex(parts[1], 32) && is_hex(parts[2], 16), "{out}");
            assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        assert_eq!(request_id(Some(b"bad id\n")).len(), 32);
        assert_eq!(request_id(None).len(), 32);
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn connection_listed_headers_are_hop_by_hop_too() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        let names = connection_listed(&h);
        assert!(names.iter().any(|n| n == "x-secret-hop"));
        assert!(HOP_BY_HOP.iter().any(|n| n == "upgrade"));
    }

    #[test]
    fn only_the_hop_by_hop_headers_present_are_named_for_removal() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("X-Secret-Hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("te", HeaderValue::from_static("gzip"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut names: Vec<String> = hop_by_hop_present(&h)
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["connection", "te", "x-secret-hop"]);
        let mut plain = HeaderMap::new();
        plain.insert("accept", HeaderValue::from_static("*/*"));
        assert!(hop_by_hop_present(&plain).is_empty());
    }

    #[test]
    fn forwarded_for_appends() {
        assert_eq!(forwarded_for(None, "10.0.0.1"), "10.0.0.1");
        assert_eq!(
            forwarded_for(Some("1.2.3.4"), "10.0.0.1"),
            "1.2.3.4, 10.0.0.1"
        );
    }
}
