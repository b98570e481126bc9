//! The plugin's configuration (the YAML mapping under `config:`, handed over as JSON), checked
//! once in `on_configure`: a bad key is rejected with the key path named, so `edge-proxy check`
//! reports it before traffic does.

use serde::Deserialize;

use crate::api_keys::{ApiKey, ApiKeys};
use crate::jwt::{Jwks, JwtRules};
use crate::rules::PathRules;

/// The configuration as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Header the authenticated client id is forwarded in (the client's own copy is removed).
    #[serde(default = "default_client_id_header")]
    pub client_id_header: String,
    /// `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Path prefixes that need credentials (default: every path).
    #[serde(default = "default_protected")]
    pub protected_prefixes: Vec<String>,
    /// Paths served without credentials: exact, or a prefix when ending in `*`.
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// Remove `Authorization` and `x-api-key` before the request goes on (the origin gets the
    /// client id instead, and the response stays cacheable).
    #[serde(default = "yes")]
    pub strip_credentials: bool,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub client_id: String,
    /// The key in clear (fine for local development keys).
    #[serde(default)]
    pub key: Option<String>,
    /// The key's SHA-256, hex: the secret itself need not be in the config.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Required `iss` (unset: not checked).
    #[serde(default)]
    pub issuer: Option<String>,
    /// `aud` must name one of these (empty: not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Tokens without `exp` are refused unless this is false.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// The claim that names the client (default `sub`).
    #[serde(default = "default_client_claim")]
    pub client_id_claim: String,
    /// An inline JWKS: `{ keys: [ {kty: oct, kid, k}, {kty: EC, crv: P-256, kid, x, y} ] }`.
    pub jwks: serde_json::Value,
}

fn default_client_id_header() -> String {
    "x-client-id".into()
}
fn default_realm() -> String {
    "edge".into()
}
fn default_protected() -> Vec<String> {
    vec!["/".into()]
}
fn default_leeway() -> u64 {
    30
}
fn default_client_claim() -> String {
    "sub".into()
}
fn yes() -> bool {
    true
}

/// The checked configuration the filter runs with.
#[derive(Debug, Default)]
pub struct Settings {
    pub client_id_header: String,
    pub realm: String,
    pub rules: PathRules,
    pub strip_credentials: bool,
    pub api_keys: ApiKeys,
    pub jwt: Option<(Jwks, JwtRules)>,
}

impl Settings {
    /// Parses and checks `bytes`; the error names the key path and what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        // No config is an empty mapping: every default, as serde fills them.
        let bytes = if bytes.is_empty() { b"{}" } else { bytes };
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| format!("config: {e}"))?;
        let header = raw.client_id_header.to_ascii_lowercase();
        if header.is_empty() || header.starts_with(':') || !header.bytes().all(is_token_byte) {
            return Err(format!(
                "config.client_id_header: `{}` is not a header name",
                raw.client_id_header
            ));
        }
        let mut keys = Vec::with_capacity(raw.api_keys.len());
        for (i, key) in raw.api_keys.iter().enumerate() {
            let at = format!("config.api_keys[{i}]");
            if key.client_id.is_empty() {
                return Err(format!("{at}.client_id: must not be empty"));
            }
            let key = match (&key.key, &key.sha256) {
                (Some(clear), None) if !clear.is_empty() => {
                    ApiKey::from_clear(&key.client_id, clear)
                }
                (None, Some(hex)) => ApiKey::from_sha256_hex(&key.client_id, hex)
                    .map_err(|e| format!("{at}.sha256: {e}"))?,
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of `key` (clear text) or `sha256` (hex digest)"
                    ))
                }
            };
            keys.push(key);
        }
        let jwt = match raw.jwt {
            None => None,
            Some(jwt) => {
                let jwks = Jwks::parse(&jwt.jwks).map_err(|e| format!("config.jwt.jwks: {e}"))?;
                if jwt.client_id_claim.is_empty() {
                    return Err("config.jwt.client_id_claim: must not be empty".into());
                }
                Some((
                    jwks,
                    JwtRules {
                        issuer: jwt.issuer,
                        audiences: jwt.audiences,
                        leeway_seconds: jwt.leeway_seconds,
                        require_exp: jwt.require_exp,
                        client_id_claim: jwt.client_id_claim,
                    },
                ))
            }
        };
        if keys.is_empty() && jwt.is_none() {
            return Err(
                "config: no credentials configured: add `api_keys` and/or `jwt` (every protected request would be refused)"
                    .into(),
            );
        }
        Ok(Self {
            client_id_header: header,
            realm: raw.realm,
            rules: PathRules::new(raw.protected_prefixes, raw.public_paths)?,
            strip_credentials: raw.strip_credentials,
            api_keys: ApiKeys::new(keys),
            jwt,
        })
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_path_of_a_bad_key() {
        let err =
            Settings::parse(br#"{"api_keys":[{"client_id":"a","key":"k"},{"client_id":"b"}]}"#)
                .unwrap_err();
        assert!(err.contains("config.api_keys[1]"), "{err}");
        let err =
            Settings::parse(br#"{"api_keys":[{"client_id":"a","sha256":"zz"}]}"#).unwrap_err();
        assert!(err.contains("config.api_keys[0].sha256"), "{err}");
        let err = Settings::parse(br#"{"api_kees":[]}"#).unwrap_err();
        assert!(err.contains("unknown field `api_kees`"), "{err}");
        let err = Settings::parse(
            br#"{"client_id_header":"bad header","api_keys":[{"client_id":"a","key":"k"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("config.client_id_header"), "{err}");
    }

    #[test]
    fn refuses_a_config_without_credentials() {
        assert!(Settings::parse(b"").unwrap_err().contains("no credentials"));
    }

    #[test]
    fn defaults() {
        let s = Settings::parse(br#"{"api_keys":[{"client_id":"a","key":"k"}]}"#).unwrap();
        assert_eq!(s.client_id_header, "x-client-id");
        assert!(s.strip_credentials);
        assert!(s.rules.needs_auth("/anything"));
    }
}
