//! The last chunk of a cached body over HTTP/2. Pingora writes a cache hit's body and then its
//! end as a separate empty DATA frame; the h2 crate flushes a large DATA frame before it queues
//! another, so each hit cost two writes (and two TLS records) to the client. Holding the latest
//! chunk back until the end is known lets the end ride on the last DATA frame: one write.

use bytes::{Bytes, BytesMut};
use pingora::cache::CachePhase;

/// Whether a response body is being served from the cache (fresh, stale or revalidated).
pub fn served_from_cache(phase: CachePhase) -> bool {
    matches!(
        phase,
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}

/// One body chunk held back until the next one, or the end, arrives.
#[derive(Debug, Default)]
pub struct HeldTail(Option<Bytes>);

impl HeldTail {
    /// Passes `body` on one chunk late: what goes out is the previously held chunk, and at the
    /// end of the stream everything still held (joined with a final chunk, if any).
    pub fn pass(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        let incoming = body.take().filter(|chunk| !chunk.is_empty());
        *body = if end_of_stream {
            match (self.0.take(), incoming) {
                (Some(held), Some(last)) => {
                    let mut joined = BytesMut::with_capacity(held.len() + last.len());
                    joined.extend_from_slice(&held);
                    joined.extend_from_slice(&last);
                    Some(joined.freeze())
                }
                (held, last) => held.or(last),
            }
        } else {
            match incoming {
                Some(chunk) => self.0.replace(chunk),
                None => None,
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(tail: &mut HeldTail, chunk: Option<&'static str>, end: bool) -> Option<Bytes> {
        let mut body = chunk.map(|c| Bytes::from_static(c.as_bytes()));
        tail.pass(&mut body, end);
        body
    }

    #[test]
    fn a_single_chunk_goes_out_with_the_end() {
        let mut tail = HeldTail::default();
        assert_eq!(step(&mut tail, Some("whole body"), false), None);
        assert_eq!(step(&mut tail, None, true), Some(Bytes::from("whole body")));
    }

    #[test]
    fn chunks_go_out_one_late_and_nothing_is_lost() {
        let mut tail = HeldTail::default();
        assert_eq!(step(&mut tail, Some("a"), false), None);
        assert_eq!(step(&mut tail, None, false), None);
        assert_eq!(step(&mut tail, Some("b"), false), Some(Bytes::from("a")));
        assert_eq!(step(&mut tail, Some(""), false), None);
        assert_eq!(step(&mut tail, Some("c"), true), Some(Bytes::from("bc")));
        assert_eq!(step(&mut tail, None, true), None);
    }

    #[test]
    fn an_empty_body_stays_empty() {
        let mut tail = HeldTail::default();
        assert_eq!(step(&mut tail, None, true), None);
    }

    #[test]
    fn only_cached_bodies_are_held() {
        assert!(served_from_cache(CachePhase::Hit));
        assert!(served_from_cache(CachePhase::Stale));
        assert!(!served_from_cache(CachePhase::Miss));
        assert!(!served_from_cache(CachePhase::Disabled(
            pingora::cache::NoCacheReason::NeverEnabled
        )));
    }
}
