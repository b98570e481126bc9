//! The authentication step of a request over the host ABI: read the credentials, decide
//! (remembering verified credentials per VM), then publish the client id or answer 401. This
//! plugin's HTTP context runs it, and so does any plugin composing it (`shop-edge`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use crate::config::Settings;
use crate::credentials::Verified;
use crate::decide::{decide, Credentials, Decision};
use crate::CLIENT_ID_PROPERTY;

/// How the step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The path is public (no client id).
    Public,
    /// An authenticated client.
    Allowed(Rc<str>),
    /// A 401 was sent: the request stops here.
    Denied,
}

/// One VM's authenticator: the settings and the credentials it verified.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub settings: Rc<Settings>,
    verified: Rc<RefCell<Verified>>,
}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

impl Authenticator {
    pub fn new(settings: Rc<Settings>) -> Self {
        Self {
            settings,
            verified: Rc::default(),
        }
    }

    /// The step for a request to `path` (no query).
    pub fn on_request_headers(&self, path: &str) -> Checked {
        let settings = &*self.settings;
        // Host calls cost: read only what the decision needs.
        let api_key = request_header("x-api-key");
        let authorization = match api_key {
            Some(_) => None,
            None => request_header("authorization"),
        };
        let now = match (&authorization, &settings.jwt) {
            (Some(_), Some(_)) => hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            _ => 0,
        };
        let creds = Credentials {
            api_key: api_key.as_deref(),
            authorization: authorization.as_deref(),
        };
        let decision = decide(settings, path, creds, now, &mut self.verified.borrow_mut());
        match decision {
            Decision::Public => {
                // Never let a client name itself.
                set_request_header(&settings.client_id_header, None);
                Checked::Public
            }
            Decision::Allowed { client_id } => {
                // Replaces any copy the client sent.
                set_request_header(&settings.client_id_header, Some(&client_id));
                let _ = hostcalls::set_property(
                    CLIENT_ID_PROPERTY.to_vec(),
                    Some(client_id.as_bytes()),
                );
                if settings.strip_credentials {
                    // An x-api-key request may also carry an unverified Authorization.
                    if api_key.is_some() {
                        set_request_header("x-api-key", None);
                    }
                    set_request_header("authorization", None);
                }
                Checked::Allowed(client_id)
            }
            Decision::Denied(denial) => {
                let body = denial.body();
                let _ = hostcalls::send_http_response(
                    401,
                    vec![
                        ("www-authenticate", denial.challenge.as_str()),
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                    ],
                    Some(body.as_bytes()),
                );
                Checked::Denied
            }
        }
    }
}
