//! JWT bearer tokens (RFC 7519 with JWS compact serialization): HS256 and ES256 only. `alg:
//! none` and every other algorithm are refused; a key is used only with the algorithm of its
//! type (an `oct` key for HS256, a P-256 `EC` key for ES256), so a token cannot pick how it is
//! checked (no algorithm confusion: an HS256 token "signed" with an EC public key never
//! verifies). Claims checked: `exp`, `nbf` (with leeway), `iss`, `aud`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

/// Why a token was refused (the text goes into `error_description`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(&'static str),
    Algorithm(String),
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim(String),
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed token: {what}"),
            Self::Algorithm(alg) => write!(f, "algorithm `{alg}` is not accepted"),
            Self::UnknownKey => write!(f, "no key for this token"),
            Self::Signature => write!(f, "signature does not verify"),
            Self::Expired => write!(f, "token expired"),
            Self::NotYetValid => write!(f, "token not valid yet"),
            Self::Issuer => write!(f, "wrong issuer"),
            Self::Audience => write!(f, "wrong audience"),
            Self::MissingClaim(name) => write!(f, "claim `{name}` missing"),
        }
    }
}

/// The claim checks.
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway_seconds: u64,
    pub require_exp: bool,
    pub client_id_claim: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::Hs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum KeyMaterial {
    Hmac(Vec<u8>),
    P256(VerifyingKey),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hmac(_) => "Hmac(..)",
            Self::P256(_) => "P256(..)",
        })
    }
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    material: KeyMaterial,
}

impl Key {
    fn alg(&self) -> Alg {
        match self.material {
            KeyMaterial::Hmac(_) => Alg::Hs256,
            KeyMaterial::P256(_) => Alg::Es256,
        }
    }
}

/// The verification keys (an inline JWKS).
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))
}

impl Jwks {
    /// `{ "keys": [ ... ] }`; every key must be usable (a typo'd key is an error, not a key
    /// silently skipped).
    pub fn parse(value: &Value) -> Result<Self, String> {
        let list = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("expected an object with a `keys` list")?;
        let mut keys = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            let at = |e: String| format!("keys[{i}]: {e}");
            let jwk: RawJwk = serde_json::from_value(raw.clone()).map_err(|e| at(e.to_string()))?;
            let material = match (jwk.kty.as_str(), jwk.alg.as_deref()) {
                ("oct", None | Some("HS256")) => {
                    let k = b64(jwk.k.as_deref().ok_or_else(|| at("`k` missing".into()))?)
                        .map_err(|e| at(format!("k: {e}")))?;
                    if k.len() < 32 {
                        return Err(at("an HS256 key needs at least 32 bytes".into()));
                    }
                    KeyMaterial::Hmac(k)
                }
                ("EC", None | Some("ES256")) => {
                    if jwk.crv.as_deref() != Some("P-256") {
                        return Err(at("only `crv: P-256` is supported".into()));
                    }
                    let coordinate = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
                        let bytes = b64(v.as_deref().ok_or_else(|| at(format!("`{name}` missing")))?)
                            .map_err(|e| at(format!("{name}: {e}")))?;
                        if bytes.len() != 32 {
                            return Err(at(format!("{name}: expected 32 bytes")));
                        }
                        Ok(bytes)
                    };
                    let (x, y) = (coordinate("x", &jwk.x)?, coordinate("y", &jwk.y)?);
                    let mut sec1 = Vec::with_capacity(65);
                    sec1.push(4);
                    sec1.extend_from_slice(&x);
                    sec1.extend_from_slice(&y);
                    let key = VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| at("not a point on P-256".into()))?;
                    KeyMaterial::P256(key)
                }
                (kty, alg) => {
                    return Err(at(format!(
                        "unsupported key (kty `{kty}`, alg `{}`): use `oct` for HS256 or `EC` P-256 for ES256",
                        alg.unwrap_or("-")
                    )))
                }
            };
            keys.push(Key {
                kid: jwk.kid,
                material,
            });
        }
        if keys.is_empty() {
            return Err("`keys` is empty".into());
        }
        Ok(Self { keys })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Whether `token` has the shape of a JWS (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// A verified token: its client id claim, and until when it stays valid (`exp` plus the
/// leeway, in seconds since the epoch; `None` when it has no `exp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub valid_until: Option<u64>,
}

/// Verifies `token` at `now` (seconds since the epoch).
pub fn verify(token: &str, jwks: &Jwks, rules: &JwtRules, now: u64) -> Result<Verified, JwtError> {
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    let header: Header = serde_json::from_slice(
        &b64(head).map_err(|_| JwtError::Malformed("header is not base64url"))?,
    )
    .map_err(|_| JwtError::Malformed("header is not JSON"))?;
    let alg = Alg::parse(&header.alg).ok_or_else(|| JwtError::Algorithm(header.alg.clone()))?;
    let signature = b64(sig).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
    let candidates = jwks
        .keys
        .iter()
        .filter(|k| k.alg() == alg)
        .filter(|k| header.kid.is_none() || k.kid.as_deref() == header.kid.as_deref());
    let mut any_key = false;
    let mut verified = false;
    for key in candidates {
        any_key = true;
        if check_signature(&key.material, signed, &signature) {
            verified = true;
            break;
        }
    }
    if !any_key {
        return Err(JwtError::UnknownKey);
    }
    if !verified {
        return Err(JwtError::Signature);
    }
    let claims: Value = serde_json::from_slice(
        &b64(body).map_err(|_| JwtError::Malformed("payload is not base64url"))?,
    )
    .map_err(|_| JwtError::Malformed("payload is not JSON"))?;
    check_claims(&claims, rules, now)
}

fn check_signature(key: &KeyMaterial, signed: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::Hmac(secret) => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(signed);
            mac.verify_slice(signature).is_ok() // constant time
        }
        KeyMaterial::P256(key) => {
            // JWS uses the raw 64-byte r||s form, never DER.
            if signature.len() != 64 {
                return false;
            }
            Signature::from_slice(signature).is_ok_and(|s| key.verify(signed, &s).is_ok())
        }
    }
}

fn check_claims(claims: &Value, rules: &JwtRules, now: u64) -> Result<Verified, JwtError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    let valid_until =
        number("exp").map(|exp| (exp.max(0.0) as u64).saturating_add(rules.leeway_seconds));
    match number("exp") {
        Some(exp) if (now as f64) > exp + rules.leeway_seconds as f64 => {
            return Err(JwtError::Expired)
        }
        None if rules.require_exp => return Err(JwtError::MissingClaim("exp".into())),
        _ => {}
    }
    if let Some(nbf) = number("nbf") {
        if ((now + rules.leeway_seconds) as f64) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(issuer) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
    }
    if !rules.audiences.is_empty() {
        let matches = |a: &Value| {
            a.as_str()
                .is_some_and(|a| rules.audiences.iter().any(|x| x == a))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(matches),
            Some(one) => matches(one),
            None => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    claims
        .get(&rules.client_id_claim)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(|id| Verified {
            client_id: id.to_string(),
            valid_until,
        })
        .ok_or_else(|| JwtError::MissingClaim(rules.client_id_claim.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use serde_json::json;

    const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn hs256(header: Value, claims: Value) -> String {
        let input = format!("{}.{}", enc(&header), enc(&claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(HS_SECRET).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn ec_key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn es256(claims: Value) -> String {
        let input = format!(
            "{}.{}",
            enc(&json!({"alg":"ES256","kid":"es"})),
            enc(&claims)
        );
        let sig: Signature = ec_key().sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn jwks() -> Jwks {
        let point = ec_key().verifying_key().to_encoded_point(false);
        Jwks::parse(&json!({"keys": [
            {"kty": "oct", "kid": "hs", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)},
            {"kty": "EC", "crv": "P-256", "kid": "es",
             "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
             "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())},
        ]}))
        .unwrap()
    }

    fn rules() -> JwtRules {
        JwtRules {
            issuer: Some("https://auth.shop".into()),
            audiences: vec!["catalog".into()],
            leeway_seconds: 30,
            require_exp: true,
            client_id_claim: "sub".into(),
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({"sub": "client-7", "iss": "https://auth.shop", "aud": ["other", "catalog"], "exp": NOW + 60})
    }

    fn client_7() -> Result<Verified, JwtError> {
        let leeway = rules().leeway_seconds;
        Ok(Verified {
            client_id: "client-7".into(),
            valid_until: Some(NOW + 60 + leeway),
        })
    }

    #[test]
    fn accepts_valid_hs256_and_es256() {
        let hs = hs256(json!({"alg":"HS256","kid":"hs"}), claims());
        assert_eq!(verify(&hs, &jwks(), &rules(), NOW), client_7());
        assert_eq!(verify(&es256(claims()), &jwks(), &rules(), NOW), client_7());
        // No kid: every key of the algorithm is tried.
        let hs = hs256(json!({"alg":"HS256"}), claims());
        assert_eq!(verify(&hs, &jwks(), &rules(), NOW), client_7());
    }

    #[test]
    fn refuses_alg_none_and_unknown_algorithms() {
        let input = format!("{}.{}.", enc(&json!({"alg":"none"})), enc(&claims()));
        assert_eq!(
            verify(&input, &jwks(), &rules(), NOW),
            Err(JwtError::Algorithm("none".into()))
        );
        let rs = hs256(json!({"alg":"RS256"}), claims());
        assert_eq!(
            verify(&rs, &jwks(), &rules(), NOW),
            Err(JwtError::Algorithm("RS256".into()))
        );
    }

    #[test]
    fn refuses_algorithm_confusion() {
        // An HS256 token whose HMAC key is the EC key's public point (the classic attack) and
        // an HS256 token naming the EC key's kid.
        let point = ec_key().verifying_key().to_encoded_point(false);
        let input = format!(
            "{}.{}",
            enc(&json!({"alg":"HS256","kid":"es"})),
            enc(&claims())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(point.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        let forged = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            verify(&forged, &jwks(), &rules(), NOW),
            Err(JwtError::UnknownKey)
        );
    }

    #[test]
    fn refuses_forged_and_tampered_tokens() {
        let good = hs256(json!({"alg":"HS256","kid":"hs"}), claims());
        let (input, _) = good.rsplit_once('.').unwrap();
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(
            verify(&forged, &jwks(), &rules(), NOW),
            Err(JwtError::Signature)
        );
        let mut other = claims();
        other["sub"] = json!("admin");
        let tampered = format!(
            "{}.{}.{}",
            good.split('.').next().unwrap(),
            enc(&other),
            good.rsplit('.').next().unwrap()
        );
        assert_eq!(
            verify(&tampered, &jwks(), &rules(), NOW),
            Err(JwtError::Signature)
        );
        let es = es256(claims());
        let (input, _) = es.rsplit_once('.').unwrap();
        let bad = format!("{input}.{}", URL_SAFE_NO_PAD.encode([1u8; 64]));
        assert_eq!(
            verify(&bad, &jwks(), &rules(), NOW),
            Err(JwtError::Signature)
        );
        assert!(matches!(
            verify("a.b", &jwks(), &rules(), NOW),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            verify("!!.b.c", &jwks(), &rules(), NOW),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn checks_time_claims_with_leeway() {
        let token = |c: Value| hs256(json!({"alg":"HS256"}), c);
        let mut c = claims();
        c["exp"] = json!(NOW - 10); // inside the 30 s leeway
        assert!(verify(&token(c.clone()), &jwks(), &rules(), NOW).is_ok());
        c["exp"] = json!(NOW - 31);
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::Expired)
        );
        let mut c = claims();
        c["nbf"] = json!(NOW + 29);
        assert!(verify(&token(c.clone()), &jwks(), &rules(), NOW).is_ok());
        c["nbf"] = json!(NOW + 31);
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::NotYetValid)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn checks_issuer_audience_and_client_claim() {
        let token = |c: Value| hs256(json!({"alg":"HS256"}), c);
        let mut c = claims();
        c["iss"] = json!("https://evil");
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::Issuer)
        );
        let mut c = claims();
        c["aud"] = json!("billing");
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::Audience)
        );
        let mut c = claims();
        c["aud"] = json!("catalog");
        assert!(verify(&token(c), &jwks(), &rules(), NOW).is_ok());
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verify(&token(c), &jwks(), &rules(), NOW),
            Err(JwtError::MissingClaim("sub".into()))
        );
    }

    #[test]
    fn jwks_errors_name_the_key() {
        let err =
            Jwks::parse(&json!({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]})).unwrap_err();
        assert!(err.starts_with("keys[0]:"), "{err}");
        let err = Jwks::parse(&json!({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]})).unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        let err = Jwks::parse(&json!({"keys": [{"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}]})).unwrap_err();
        assert!(err.contains("not a point"), "{err}");
        assert!(Jwks::parse(&json!({"keys": []})).is_err());
    }
}
