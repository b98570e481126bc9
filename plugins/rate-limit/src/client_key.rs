//! Whose bucket a request draws from: the client id the auth filter published (a VERIFIED
//! credential), else the client address: the configured trusted header's value (set by a front
//! proxy the operator trusts, e.g. `x-real-ip`), else the connection's source address. A
//! credential nobody verified (an `x-api-key` on a public path) never names a bucket: random
//! keys would each get a fresh burst.

/// The bucket owner for a request, appended to `out` (`client:<id>` or `addr:<host>`).
pub fn push_client_key(
    out: &mut String,
    client_id: Option<&str>,
    trusted_address: Option<&str>,
    source: Option<&str>,
) {
    if let Some(id) = client_id.filter(|s| !s.is_empty()) {
        out.push_str("client:");
        out.push_str(id);
        return;
    }
    let address = trusted_address
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or(source)
        .map_or("unknown", host_of);
    out.push_str("addr:");
    out.push_str(address);
}

/// `1.2.3.4:5678` -> `1.2.3.4`, `[::1]:5678` -> `::1`.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_key(id: Option<&str>, trusted: Option<&str>, source: Option<&str>) -> String {
        let mut out = String::new();
        push_client_key(&mut out, id, trusted, source);
        out
    }

    #[test]
    fn client_id_then_trusted_address_then_source() {
        assert_eq!(
            client_key(Some("c1"), Some("9.9.9.9"), Some("1.2.3.4:5")),
            "client:c1"
        );
        assert_eq!(
            client_key(None, Some(" 9.9.9.9 "), Some("1.2.3.4:5")),
            "addr:9.9.9.9"
        );
        assert_eq!(
            client_key(None, Some(""), Some("1.2.3.4:5")),
            "addr:1.2.3.4"
        );
        assert_eq!(client_key(None, None, Some("1.2.3.4:5")), "addr:1.2.3.4");
        assert_eq!(client_key(None, None, Some("[::1]:80")), "addr:::1");
        assert_eq!(client_key(None, None, Some("::1")), "addr:::1");
        assert_eq!(client_key(Some(""), None, None), "addr:unknown");
    }
}
