//! Whose bucket a request draws from: the client id the auth filter published, else the API
//! key the request carries (hashed: shared data never holds a secret), else the source address.

use sha2::{Digest, Sha256};

/// The bucket owner for a request.
pub fn client_key(client_id: Option<&str>, api_key: Option<&str>, source: Option<&str>) -> String {
    if let Some(id) = client_id.filter(|s| !s.is_empty()) {
        return format!("client:{id}");
    }
    if let Some(key) = api_key.filter(|s| !s.is_empty()) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key.as_bytes());
        let mut out = String::with_capacity(4 + 24);
        out.push_str("key:");
        for b in &digest[..12] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        return out;
    }
    format!("addr:{}", source.map_or("unknown", host_of))
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

    #[test]
    fn client_id_then_api_key_then_address() {
        assert_eq!(
            client_key(Some("c1"), Some("k"), Some("1.2.3.4:5")),
            "client:c1"
        );
        let by_key = client_key(None, Some("secret"), Some("1.2.3.4:5"));
        assert!(by_key.starts_with("key:") && !by_key.contains("secret"));
        assert_eq!(by_key, client_key(None, Some("secret"), None));
        assert_eq!(client_key(None, None, Some("1.2.3.4:5")), "addr:1.2.3.4");
        assert_eq!(client_key(None, None, Some("[::1]:80")), "addr:::1");
        assert_eq!(client_key(None, None, Some("::1")), "addr:::1");
        assert_eq!(client_key(Some(""), None, None), "addr:unknown");
    }
}
