//! The edge cache. `storage.rs`: pingora-cache `Storage` backed by moka, bounded by bytes, with a
//! category tag index for purges. `tail.rs`: a cached body's last chunk held back over HTTP/2 so the
//! end of the stream rides on it. `tiers.rs`: `X-Cache` across an edge and its shield.

pub mod cacheability;
pub mod key;
pub mod storage;
pub mod tail;
pub mod tiers;

/// The `X-Cache` value for where a response came from.
pub fn x_cache(phase: pingora::cache::CachePhase) -> &'static str {
    use pingora::cache::CachePhase;
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        _ => "BYPASS",
    }
}
