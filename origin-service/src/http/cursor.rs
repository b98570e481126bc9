//! Opaque pagination cursors: base64url("v1:<last id>"). Clients must treat them as opaque.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const PREFIX: &str = "v1:";

pub fn encode(after_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{after_id}"))
}

/// The id the cursor points after, or `None` when it is not a cursor we issued.
pub fn decode(cursor: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let id: i64 = text.strip_prefix(PREFIX)?.parse().ok()?;
    (id > 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(4711)), Some(4711));
    }

    #[test]
    fn rejects_what_we_did_not_issue() {
        for bad in ["", "!!!", "djE6", "djE6LTE", "eHg6MTI", "djE6MWE"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
