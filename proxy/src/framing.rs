//! Request message checks Pingora leaves to the application, made once in
//! `early_request_filter`, before anything is forwarded: a missing `Host` (HTTP/1.1), transfer
//! codings other than `chunked` (which would be forwarded without their coding), repeated
//! `Content-Length` (identical copies collapse to one, differing ones are refused), and
//! `Expect` (only `100-continue` is supported: the proxy answers it itself once the request
//! has passed its plugins). Also the body predicates the plugin chain frames its callbacks by
//! (whether a request or a response carries a body, and its announced length). Pure functions
//! over the header, unit tested.

use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Version};
use pingora::http::{RequestHeader, ResponseHeader};

/// Why a request is refused before it is proxied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

const fn refuse(status: u16, code: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// Checks the request's framing; collapses identical repeated `Content-Length` values.
pub fn check(request: &mut RequestHeader) -> Result<(), Refusal> {
    if request.version == Version::HTTP_11 && !request.headers.contains_key(HOST) {
        // RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        return Err(refuse(
            400,
            "missing_host",
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let codings_other_than_chunked = request
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"));
    if codings_other_than_chunked {
        // RFC 9112 6.1: 501 for a transfer coding the server does not understand.
        return Err(refuse(
            501,
            "unsupported_transfer_coding",
            "only the chunked transfer coding is supported",
        ));
    }
    let mut values = request.headers.get_all(CONTENT_LENGTH).iter();
    let repeated = values.next().is_some() && values.next().is_some();
    if repeated {
        // Only then collected: the common request allocates nothing here.
        let lengths: Vec<HeaderValue> = request
            .headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .cloned()
            .collect();
        if lengths.iter().any(|v| *v != lengths[0]) {
            return Err(refuse(
                400,
                "bad_content_length",
                "differing Content-Length values",
            ));
        }
        // RFC 9110 8.6: identical values may be collapsed to one.
        if request
            .insert_header(CONTENT_LENGTH, lengths[0].clone())
            .is_err()
        {
            return Err(refuse(400, "bad_content_length", "bad Content-Length"));
        }
    }
    match expectation(request) {
        Expectation::None | Expectation::Continue => Ok(()),
        Expectation::Unsupported => Err(refuse(
            417,
            "expectation_failed",
            "only Expect: 100-continue is supported",
        )),
    }
}

/// What the request's `Expect` header asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    None,
    /// `100-continue` (HTTP/1.1): the client waits for `100 Continue` before its body.
    Continue,
    Unsupported,
}

pub fn expectation(request: &RequestHeader) -> Expectation {
    let mut values = request.headers.get_all(EXPECT).iter().peekable();
    if values.peek().is_none() {
        return Expectation::None;
    }
    let all_continue = values.all(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    });
    match (all_continue, request.version) {
        (true, Version::HTTP_11) => Expectation::Continue,
        // HTTP/1.0 clients do not wait for a 100: nothing to answer (RFC 9110 10.1.1).
        (true, _) => Expectation::None,
        (false, _) => Expectation::Unsupported,
    }
}

/// The `Content-Length` in `headers`, when there is a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_LENGTH)?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// Whether the request carries a body (a non-zero length, or a chunked one).
pub fn request_has_body(request: &RequestHeader) -> bool {
    content_length(&request.headers).is_some_and(|n| n > 0)
        || request.headers.contains_key(TRANSFER_ENCODING)
}

/// Whether `response` to `request` can carry a body at all (not for HEAD, 1xx, 204, 304).
pub fn response_may_have_body(request: &RequestHeader, response: &ResponseHeader) -> bool {
    request.method != http::Method::HEAD
        && !matches!(response.status.as_u16(), 100..=199 | 204 | 304)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    #[test]
    fn host_codings_lengths_and_expectations() {
        assert_eq!(check(&mut request(&[])).unwrap_err().status, 400);
        let host = ("host", "a");
        assert!(check(&mut request(&[host, ("transfer-encoding", "chunked")])).is_ok());
        let gzip = check(&mut request(&[
            host,
            ("transfer-encoding", "gzip, chunked"),
        ]));
        assert_eq!(gzip.unwrap_err().status, 501);
        let mut twice = request(&[host, ("content-length", "5"), ("content-length", "5")]);
        assert!(check(&mut twice).is_ok());
        assert_eq!(twice.headers.get_all("content-length").iter().count(), 1);
        let differing = check(&mut request(&[
            host,
            ("content-length", "5"),
            ("content-length", "6"),
        ]));
        assert_eq!(differing.unwrap_err().status, 400);
        let cont = request(&[host, ("expect", "100-Continue")]);
        assert_eq!(expectation(&cont), Expectation::Continue);
        let odd = check(&mut request(&[host, ("expect", "something-else")]));
        assert_eq!(odd.unwrap_err().status, 417);
    }

    #[test]
    fn body_predicates() {
        assert!(!request_has_body(&request(&[("content-length", "0")])));
        assert!(request_has_body(&request(&[("content-length", "3")])));
        assert!(request_has_body(&request(&[(
            "transfer-encoding",
            "chunked"
        )])));
        assert!(!request_has_body(&request(&[])));
        assert_eq!(
            content_length(&request(&[("content-length", "x")]).headers),
            None
        );
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        let head = RequestHeader::build("HEAD", b"/", None).unwrap();
        for (status, may) in [(200, true), (204, false), (304, false), (101, false)] {
            let response = ResponseHeader::build(status, None).unwrap();
            assert_eq!(response_may_have_body(&get, &response), may, "{status}");
        }
        let ok = ResponseHeader::build(200, None).unwrap();
        assert!(!response_may_have_body(&head, &ok));
    }
}
