//! Authentication filter (proxy-wasm, `wasm32-wasip1`): API keys from `x-api-key` or
//! `Authorization: Bearer`, compared in constant time against SHA-256 digests, and JWT bearer
//! tokens (HS256, ES256; see [`jwt`]). Per-path rules say what is public. An authenticated
//! request goes on with the client id in a header (the client's own copy of that header is
//! always removed) and in the `auth.client_id` property, which the rate limiter reads; a
//! refused one gets a 401 with `WWW-Authenticate` and a JSON error.

pub mod api_keys;
pub mod config;
pub mod credentials;
pub mod decide;
pub mod filter;
pub mod jwt;
pub mod rules;

/// The property the authenticated client id is published under (path `auth.client_id`).
pub use plugin_support::CLIENT_ID_PROPERTY;

/// The plugin itself (off when another plugin composes this crate's [`filter`]).
#[cfg(feature = "filter")]
mod plugin {
    use plugin_support::ConfiguredPlugin;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::Action;

    use crate::config::Settings;
    use crate::filter::{Authenticator, Checked};

    proxy_wasm::main! {{
        plugin_support::register::<Auth>();
    }}

    impl ConfiguredPlugin for Auth {
        const NAME: &'static str = "auth";
        type Settings = Settings;
        /// One authenticator per VM (its verified credentials are the VM's).
        type State = Authenticator;

        fn parse(bytes: &[u8]) -> Result<Settings, String> {
            Settings::parse(bytes)
        }

        fn build(settings: std::rc::Rc<Settings>) -> Authenticator {
            Authenticator::new(settings)
        }

        fn context(auth: &Authenticator) -> Box<dyn HttpContext> {
            Box::new(Auth { auth: auth.clone() })
        }
    }

    struct Auth {
        auth: Authenticator,
    }

    impl Context for Auth {}

    impl HttpContext for Auth {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            let target = self.get_http_request_header(":path").unwrap_or_default();
            let path = target.split('?').next().unwrap_or_default();
            match self.auth.on_request_headers(path) {
                Checked::Denied => Action::Pause,
                Checked::Public | Checked::Allowed(_) => Action::Continue,
            }
        }
    }
}
