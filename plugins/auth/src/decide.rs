//! The decision for one request, pure so it unit-tests natively: public path, authenticated
//! client (by API key or JWT), or a 401 with its challenge.

use std::rc::Rc;

use crate::config::Settings;
use crate::credentials::Verified;
use crate::jwt;

/// What the request presented.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// `x-api-key`.
    pub api_key: Option<&'a str>,
    /// `Authorization`.
    pub authorization: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The path needs no credentials.
    Public,
    Allowed {
        client_id: Rc<str>,
    },
    Denied(Denial),
}

/// A 401: the `WWW-Authenticate` challenge and the JSON error message.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    pub challenge: String,
    pub message: String,
}

impl Denial {
    fn missing(realm: &str) -> Self {
        Self {
            challenge: format!("Bearer realm=\"{realm}\""),
            message: "credentials required: send `x-api-key` or `Authorization: Bearer <token>`"
                .into(),
        }
    }

    fn invalid(realm: &str, why: &str) -> Self {
        let quoted = why.replace(['"', '\\'], "'");
        Self {
            challenge: format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{quoted}\""
            ),
            message: format!("invalid credentials: {why}"),
        }
    }

    /// The response body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": "unauthorized", "message": self.message}}).to_string()
    }
}

/// The bearer token of an `Authorization` value (scheme matched case-insensitively).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client of API key `key`: remembered, or checked (and remembered when valid).
fn client_of_key(settings: &Settings, verified: &mut Verified, key: &str) -> Option<Rc<str>> {
    if let Some(client) = verified.key(key) {
        return Some(client);
    }
    let client: Rc<str> = settings.api_keys.client_for(key)?.into();
    verified.remember_key(key, client.clone());
    Some(client)
}

/// Decides for a request to `path` (no query) at `now` (seconds since the epoch); `verified`
/// remembers the credentials already checked.
pub fn decide(
    settings: &Settings,
    path: &str,
    creds: Credentials<'_>,
    now: u64,
    verified: &mut Verified,
) -> Decision {
    if !settings.rules.needs_auth(path) {
        return Decision::Public;
    }
    let realm = settings.realm.as_str();
    if let Some(key) = creds.api_key {
        return match client_of_key(settings, verified, key.trim()) {
            Some(client_id) => Decision::Allowed { client_id },
            None => Decision::Denied(Denial::invalid(realm, "unknown API key")),
        };
    }
    let Some(authorization) = creds.authorization else {
        return Decision::Denied(Denial::missing(realm));
    };
    let Some(token) = bearer(authorization) else {
        return Decision::Denied(Denial::invalid(
            realm,
            "the Authorization scheme must be Bearer",
        ));
    };
    match &settings.jwt {
        Some((jwks, rules)) if jwt::looks_like_jwt(token) => {
            if let Some(client_id) = verified.token(token, now) {
                return Decision::Allowed { client_id };
            }
            match jwt::verify(token, jwks, rules, now) {
                Ok(ok) => {
                    let client_id: Rc<str> = ok.client_id.into();
                    verified.remember_token(token, client_id.clone(), ok.valid_until);
                    Decision::Allowed { client_id }
                }
                Err(e) => Decision::Denied(Denial::invalid(realm, &e.to_string())),
            }
        }
        // A bearer that is no JWT may be an API key.
        _ => match client_of_key(settings, verified, token) {
            Some(client_id) => Decision::Allowed { client_id },
            None => Decision::Denied(Denial::invalid(realm, "unknown bearer credentials")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::parse(
            br#"{"realm":"catalog","protected_prefixes":["/api/"],"public_paths":["/api/v1/categories"],
                 "api_keys":[{"client_id":"local","key":"dev-local-key"}]}"#,
        )
        .unwrap()
    }

    fn creds<'a>(api_key: Option<&'a str>, authorization: Option<&'a str>) -> Credentials<'a> {
        Credentials {
            api_key,
            authorization,
        }
    }

    #[test]
    fn api_key_from_either_header() {
        let s = settings();
        let allowed = Decision::Allowed {
            client_id: "local".into(),
        };
        assert_eq!(
            decide(
                &s,
                "/api/v1/products",
                creds(Some("dev-local-key"), None),
                0,
                &mut Verified::default()
            ),
            allowed
        );
        assert_eq!(
            decide(
                &s,
                "/api/v1/products",
                creds(None, Some("bearer dev-local-key")),
                0,
                &mut Verified::default()
            ),
            allowed
        );
    }

    #[test]
    fn missing_and_wrong_credentials_are_denied_with_a_challenge() {
        let s = settings();
        let Decision::Denied(d) = decide(
            &s,
            "/api/v1/products",
            creds(None, None),
            0,
            &mut Verified::default(),
        ) else {
            panic!("expected a denial");
        };
        assert_eq!(d.challenge, "Bearer realm=\"catalog\"");
        let Decision::Denied(d) = decide(
            &s,
            "/api/v1/products",
            creds(Some("nope"), None),
            0,
            &mut Verified::default(),
        ) else {
            panic!("expected a denial");
        };
        assert!(d.challenge.contains("error=\"invalid_token\""));
        assert!(d.body().contains("\"unauthorized\""));
        let Decision::Denied(d) = decide(
            &s,
            "/api/x",
            creds(None, Some("Basic abc")),
            0,
            &mut Verified::default(),
        ) else {
            panic!("expected a denial");
        };
        assert!(d.message.contains("Bearer"));
    }

    #[test]
    fn a_verified_key_is_remembered_and_a_wrong_one_never_is() {
        let s = settings();
        let mut verified = Verified::default();
        let path = "/api/v1/products";
        for _ in 0..2 {
            let allowed = decide(
                &s,
                path,
                creds(Some("dev-local-key"), None),
                0,
                &mut verified,
            );
            assert_eq!(
                allowed,
                Decision::Allowed {
                    client_id: "local".into()
                }
            );
        }
        assert_eq!(verified.key("dev-local-key").as_deref(), Some("local"));
        let wrong = decide(&s, path, creds(Some("guess"), None), 0, &mut verified);
        assert!(matches!(wrong, Decision::Denied(_)));
        assert_eq!(verified.key("guess"), None);
    }

    #[test]
    fn public_paths_need_nothing() {
        let s = settings();
        assert_eq!(
            decide(
                &s,
                "/api/v1/categories",
                creds(None, None),
                0,
                &mut Verified::default()
            ),
            Decision::Public
        );
        assert_eq!(
            decide(
                &s,
                "/healthz",
                creds(None, None),
                0,
                &mut Verified::default()
            ),
            Decision::Public
        );
    }
}
