//! Cacheable JSON representations: serialized into a reused per-thread buffer, tagged with a
//! strong ETag (xxh3-128 of the bytes), answered with 304 when `If-None-Match` matches.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

/// Starting size of each thread's serialization buffer; it grows to the largest body seen.
const BUFFER_START: usize = 16 * 1024;

thread_local! {
    static BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(BUFFER_START));
}

/// A rendered response body and its validator.
#[derive(Debug, Clone)]
pub struct Representation {
    pub body: Bytes,
    pub etag: HeaderValue,
}

impl Representation {
    /// Serializes `value` into this thread's reused buffer and splits the bytes off it: once the
    /// response is written and dropped, the buffer reclaims the allocation for the next one.
    pub fn json<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        let body = BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            buffer.clear();
            if buffer.capacity() < BUFFER_START {
                buffer.reserve(BUFFER_START);
            }
            let result = serde_json::to_writer((&mut *buffer).writer(), value);
            let bytes = buffer.split().freeze();
            result.map(|()| bytes)
        })?;
        Ok(Self::from_body(body))
    }

    pub fn from_body(body: Bytes) -> Self {
        let tag = format!("\"{:032x}\"", xxh3_128(&body));
        // Hex digits and quotes are always a valid header value.
        let etag = HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""));
        Self { body, etag }
    }

    /// Bytes this representation holds, for cache weighing.
    pub fn weight(&self) -> u32 {
        u32::try_from(self.body.len() + self.etag.len() + 64).unwrap_or(u32::MAX)
    }

    /// 200 with the body, or 304 when the client already holds this exact representation.
    pub fn respond(
        &self,
        request: &HeaderMap,
        cache_control: &HeaderValue,
    ) -> Response<Full<Bytes>> {
        let not_modified = if_none_match_matches(request, &self.etag);
        let mut response = if not_modified {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            Response::new(Full::new(self.body.clone()))
        };
        let headers = response.headers_mut();
        if !not_modified {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, cache_control.clone());
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        response
    }
}

/// RFC 9110 §13.1.2: weak comparison; `*` matches any current representation.
fn if_none_match_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

/// `public, s-maxage=N` for shared caches such as the edge proxy.
pub fn cache_control(s_maxage: std::time::Duration) -> HeaderValue {
    let value = format!("public, s-maxage={}", s_maxage.as_secs());
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("no-store"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(inm: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(inm).unwrap());
        h
    }

    #[test]
    fn same_value_same_etag_and_buffer_reuse_keeps_bodies_intact() {
        let a = Representation::json(&vec![1, 2, 3]).unwrap();
        let b = Representation::json(&vec![4, 5]).unwrap();
        let c = Representation::json(&vec![1, 2, 3]).unwrap();
        assert_eq!(&a.body[..], b"[1,2,3]");
        assert_eq!(&b.body[..], b"[4,5]");
        assert_eq!(a.etag, c.etag);
        assert_ne!(a.etag, b.etag);
    }

    #[test]
    fn conditional_requests() {
        let rep = Representation::from_body(Bytes::from_static(b"{}"));
        let cc = cache_control(std::time::Duration::from_secs(30));
        let tag = rep.etag.to_str().unwrap().to_string();
        for inm in [
            tag.clone(),
            format!("W/{tag}"),
            "*".into(),
            format!("\"x\", {tag}"),
        ] {
            assert_eq!(
                rep.respond(&headers(&inm), &cc).status(),
                StatusCode::NOT_MODIFIED
            );
        }
        let fresh = rep.respond(&headers("\"other\""), &cc);
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(
            fresh.headers()[header::CACHE_CONTROL],
            "public, s-maxage=30"
        );
        assert_eq!(fresh.headers()[header::VARY], "Accept-Encoding");
    }
}
