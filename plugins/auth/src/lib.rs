//! Authentication filter (proxy-wasm, `wasm32-wasip1`): API keys from `x-api-key` or
//! `Authorization: Bearer`, compared in constant time against SHA-256 digests, and JWT bearer
//! tokens (HS256, ES256; see [`jwt`]). Per-path rules say what is public. An authenticated
//! request goes on with the client id in a header (the client's own copy of that header is
//! always removed) and in the `auth.client_id` property, which the rate limiter reads; a
//! refused one gets a 401 with `WWW-Authenticate` and a JSON error.

pub mod api_keys;
pub mod config;
pub mod decide;
pub mod jwt;
pub mod rules;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use plugin_support::ConfiguredRoot;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::config::Settings;
use crate::decide::{decide, Credentials, Decision};

/// The property the authenticated client id is published under (path `auth.client_id`).
pub const CLIENT_ID_PROPERTY: [&str; 2] = ["auth", "client_id"];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ConfiguredRoot::new(
            "auth",
            Settings::parse,
            Box::new(|settings| Box::new(Auth { settings })),
        ))
    });
}}

struct Auth {
    settings: Rc<Settings>,
}

impl Context for Auth {}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let settings = self.settings.clone();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default();
        // Host calls cost: read only what the decision needs.
        let api_key = self.get_http_request_header("x-api-key");
        let authorization = match api_key {
            Some(_) => None,
            None => self.get_http_request_header("authorization"),
        };
        let now = match (&authorization, &settings.jwt) {
            (Some(_), Some(_)) => self
                .get_current_time()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            _ => 0,
        };
        let creds = Credentials {
            api_key: api_key.as_deref(),
            authorization: authorization.as_deref(),
        };
        match decide(&settings, path, creds, now) {
            Decision::Public => {
                // Never let a client name itself.
                self.set_http_request_header(&settings.client_id_header, None);
                Action::Continue
            }
            Decision::Allowed { client_id } => {
                // Replaces any copy the client sent.
                self.set_http_request_header(&settings.client_id_header, Some(&client_id));
                self.set_property(CLIENT_ID_PROPERTY.to_vec(), Some(client_id.as_bytes()));
                if settings.strip_credentials {
                    // An x-api-key request may also carry an unverified Authorization.
                    if api_key.is_some() {
                        self.set_http_request_header("x-api-key", None);
                    }
                    self.set_http_request_header("authorization", None);
                }
                Action::Continue
            }
            Decision::Denied(denial) => {
                let body = denial.body();
                self.send_http_response(
                    401,
                    vec![
                        ("www-authenticate", denial.challenge.as_str()),
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
