//! Tiered caching: an edge whose upstream is another edge-proxy instance (`shield: true`) keeps
//! the shield's `X-Cache` (under [`X_CACHE_SHIELD`], cached with the response) and shows it
//! after its own: `MISS, HIT from shield`, `HIT, MISS from shield`. The shield computes the
//! same cache key (the client's Host, path and key query parameters are forwarded as they
//! came), and each tier coalesces concurrent misses of a key into one fetch.

pub const X_CACHE: &str = "x-cache";
/// The shield's `X-Cache`, as received when the entry was fetched.
pub const X_CACHE_SHIELD: &str = "x-cache-shield";

/// `ours, theirs from shield` (the shield's value as sent; control characters dropped).
pub fn both(ours: &str, shield: &[u8]) -> String {
    let theirs: String = String::from_utf8_lossy(shield)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    format!("{ours}, {} from shield", theirs.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tiers_show_in_order() {
        assert_eq!(both("HIT", b"MISS"), "HIT, MISS from shield");
        assert_eq!(both("MISS", b" HIT\r\n"), "MISS, HIT from shield");
    }
}
