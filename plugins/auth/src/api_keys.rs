//! API keys: every configured key is kept as its SHA-256 only, and a presented key is hashed
//! and compared with every configured digest in constant time (`subtle`), so neither the
//! comparison nor which key matched leaks through timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct ApiKey {
    client_id: String,
    digest: [u8; 32],
}

impl ApiKey {
    pub fn from_clear(client_id: &str, key: &str) -> Self {
        Self {
            client_id: client_id.to_string(),
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    pub fn from_sha256_hex(client_id: &str, hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(format!(
                "expected 64 hex digits (a SHA-256), got {} characters",
                hex.len()
            ));
        }
        let mut digest = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            digest[i] = u8::from_str_radix(text, 16).map_err(|_| format!("`{text}` is not hex"))?;
        }
        Ok(Self {
            client_id: client_id.to_string(),
            digest,
        })
    }
}

#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The client id of the key `presented`, if it is one of ours. Every digest is compared
    /// (no early exit).
    pub fn client_for(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(key.client_id.as_str());
            }
        }
        found
    }
}

/// The hex SHA-256 of `text` (what to put in `sha256:` for a key).
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_and_hashed_keys_match_the_same_secret() {
        let secret = "dev-local-catalog-key";
        let keys = ApiKeys::new(vec![
            ApiKey::from_clear("local", secret),
            ApiKey::from_sha256_hex("partner", &sha256_hex("partner-secret")).unwrap(),
        ]);
        assert_eq!(keys.client_for(secret), Some("local"));
        assert_eq!(keys.client_for("partner-secret"), Some("partner"));
        assert_eq!(keys.client_for("partner-secre"), None);
        assert_eq!(keys.client_for(""), None);
    }

    #[test]
    fn rejects_malformed_digests() {
        assert!(ApiKey::from_sha256_hex("a", "abc").is_err());
        assert!(ApiKey::from_sha256_hex("a", &"g".repeat(64)).is_err());
        assert!(ApiKey::from_sha256_hex("a", &sha256_hex("x").to_uppercase()).is_ok());
    }
}
