//! One normalisation of the request target, applied once in `early_request_filter` before
//! anything reads it, so routing, the plugins' `:path`, the rate-limit rules, the cache key and
//! the origin all see the same spelling (`category=%70olo` is `category=polo` everywhere, or a
//! rule matching the raw text could be dodged while the cache and the origin decode it).
//!
//! The normalisations are the ones RFC 3986 (section 6.2.2) says never change what a URI
//! identifies: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every
//! other percent-encoding gets upper-case hex, and dot segments are removed from the path (so
//! `/api/v1/%2e%2e/admin` is `/api/admin` for routing and the origin alike). A `%` that starts no
//! escape is encoded as `%25`. Anything else, `+` included, is left exactly as sent.

use std::borrow::Cow;

use pingora::http::RequestHeader;

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The normalised target is no valid URI (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request target")]
pub struct BadTarget;

/// Normalises `request`'s target in place.
pub fn apply(request: &mut RequestHeader) -> Result<(), BadTarget> {
    let uri = &request.uri;
    let target = uri.path_and_query().map(|p| p.as_str());
    if let Some(Cow::Owned(normal)) = target.map(request_target) {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = normal.parse().ok();
        let uri = http::Uri::from_parts(parts).map_err(|_| BadTarget)?;
        request.set_uri(uri);
    }
    Ok(())
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of the others; a `%`
/// not followed by two hex digits becomes `%25` (what a lenient decoder reads it as anyway).
fn normalize_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| {
                Some((
                    hex_value(*bytes.get(i + 1)?)?,
                    hex_value(*bytes.get(i + 2)?)?,
                ))
            })
            .flatten();
        match escape {
            Some((high, low)) => {
                let byte = high << 4 | low;
                if is_unreserved(byte) {
                    out.push(byte);
                } else {
                    out.extend([b'%', HEX[usize::from(high)], HEX[usize::from(low)]]);
                }
                i += 3;
            }
            // A `%` that starts no escape is encoded as `%25`: left bare, it could form a new
            // escape with what decoding puts after it (`%%30a` would become `%0a`, a newline
            // for the origin that the client never sent).
            None if bytes[i] == b'%' => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    if out == bytes {
        return Cow::Borrowed(text);
    }
    // Only ASCII escapes were rewritten to ASCII: the text stays valid UTF-8.
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// RFC 3986 `remove_dot_segments` for an absolute path (one starting with `/`).
fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    let has_dots = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !has_dots || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    kept.pop();
                }
                // A trailing `.` or `..` leaves the path ending in `/`.
                if i == last {
                    kept.push("");
                }
            }
            other => kept.push(other),
        }
    }
    Cow::Owned(format!("/{}", kept.join("/")))
}

/// The normalised form of an origin-form request target (`/path?query`); borrowed when the
/// target is already normal (the common case costs two scans and no allocation).
pub fn request_target(target: &str) -> Cow<'_, str> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let escaped_path = normalize_escapes(path);
    let clean_path = remove_dot_segments(&escaped_path);
    let clean_query = query.map(normalize_escapes);
    let unchanged = matches!(clean_path, Cow::Borrowed(_))
        && matches!(escaped_path, Cow::Borrowed(_))
        && !matches!(clean_query, Some(Cow::Owned(_)));
    if unchanged {
        return Cow::Borrowed(target);
    }
    let mut out = clean_path.into_owned();
    if let Some(query) = clean_query {
        out.push('?');
        out.push_str(&query);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(
            request_target("/api/v1/products?category=%70olo"),
            "/api/v1/products?category=polo"
        );
        assert_eq!(request_target("/api/v1/product%73"), "/api/v1/products");
        assert_eq!(request_target("/a?q=x%2fy%2Cz%7e"), "/a?q=x%2Fy%2Cz~");
        assert_eq!(
            request_target("/a?q=%zz%4"),
            "/a?q=%25zz%254",
            "a bare % is encoded"
        );
        assert_eq!(request_target("/a?q=a+b&r=%20"), "/a?q=a+b&r=%20");
        assert_eq!(request_target("/caf%C3%A9"), "/caf%C3%A9");
    }

    /// Found by the property tests: decoding `%30` after a bare `%` made a new escape, `%0a`.
    #[test]
    fn decoding_never_creates_an_escape() {
        assert_eq!(request_target("/%%30a"), "/%250a");
        assert_eq!(request_target("/?%%30%30"), "/?%2500");
        assert_eq!(request_target("/%%33%30"), "/%2530");
    }

    #[test]
    fn dot_segments_are_removed_encoded_or_not() {
        assert_eq!(request_target("/api/v1/../admin"), "/api/admin");
        assert_eq!(request_target("/api/v1/%2e%2E/admin?x=1"), "/api/admin?x=1");
        assert_eq!(request_target("/api/./v1/."), "/api/v1/");
        assert_eq!(request_target("/../../etc"), "/etc");
        assert_eq!(request_target("/a/.."), "/");
        assert_eq!(request_target("/a/..b/.c"), "/a/..b/.c");
    }

    #[test]
    fn normal_targets_are_borrowed() {
        for target in [
            "/",
            "/api/v1/products?category=polo&limit=20",
            "/a%2Fb",
            "*",
        ] {
            assert!(
                matches!(request_target(target), Cow::Borrowed(_)),
                "{target}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::request_target;
    use proptest::prelude::*;

    /// Targets built from the characters that matter here: escapes (valid, lower-case,
    /// malformed), dots, slashes, query separators, unreserved and reserved characters.
    fn target() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("?".to_string()),
            Just("&".to_string()),
            Just("=".to_string()),
            Just("+".to_string()),
            Just("%".to_string()),
            "%[0-9a-fA-F]{2}",
            "[a-zA-Z0-9._~-]{1,4}",
            "[!$'()*,;:@]",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    /// Decodes every valid escape (what an origin finally sees).
    fn decoded(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(byte))
                    if bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit() =>
                {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        out
    }

    proptest! {
        /// Normalising twice changes nothing more; the result is a valid request target.
        #[test]
        fn idempotent_and_still_a_target(target in target()) {
            let once = request_target(&target).into_owned();
            let twice = request_target(&once).into_owned();
            prop_assert_eq!(twice, once.clone());
            prop_assert!(once.parse::<http::uri::PathAndQuery>().is_ok(), "{}", once);
        }

        /// The query means the same after normalisation (decoded, byte for byte): spellings
        /// change, values never do.
        #[test]
        fn the_query_decodes_to_the_same_bytes(target in target()) {
            let normal = request_target(&target);
            let query = |t: &str| t.split_once('?').map(|(_, q)| decoded(q));
            prop_assert_eq!(query(&target), query(&normal));
        }

        /// No escape of an unreserved character survives, and no `.`/`..` segment.
        #[test]
        fn no_unreserved_escape_or_dot_segment_survives(target in target()) {
            let normal = request_target(&target);
            let (path, _) = normal.split_once('?').unwrap_or((&normal, ""));
            prop_assert!(!path.split('/').any(|s| s == "." || s == ".."), "{}", normal);
            let bytes = normal.as_bytes();
            for i in 0..bytes.len() {
                if bytes[i] == b'%' {
                    if let Some(Ok(byte)) = bytes.get(i + 1..i + 3).map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16)) {
                        prop_assert!(!(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)), "{}", normal);
                    }
                }
            }
        }
    }
}
