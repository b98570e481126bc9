//! The root context the production plugins share: `on_configure` parses the plugin config
//! with the plugin's own checker (a refusal is logged with the key path and fails the start, so
//! `edge-proxy check` names the plugin), and each HTTP context is built around the parsed
//! settings. Also [`CREATE_ONLY`], the CAS token that makes a shared-data write create-if-absent.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

/// The CAS token to create a shared-data key with when `get_shared_data` found none:
/// `set_shared_data(key, value, cas.or(CREATE_ONLY))`. No entry ever holds it, so the write
/// succeeds only where the key is still absent, and otherwise fails with `CasMismatch` (another VM
/// created it first: read it again and CAS from there). A plain write (`None`) would overwrite
/// that VM's creation and every update made on it since. Our host reserves the token; on Envoy it
/// works the same until its CAS counter has made 2^32 writes.
pub const CREATE_ONLY: Option<u32> = Some(u32::MAX);

/// Parses raw config bytes into settings, or says which key is wrong.
pub type Parse<S> = fn(&[u8]) -> Result<S, String>;

/// Builds the HTTP context of one request around the settings.
pub type MakeContext<S> = Box<dyn Fn(Rc<S>) -> Box<dyn HttpContext>>;

pub struct ConfiguredRoot<S> {
    plugin: &'static str,
    parse: Parse<S>,
    make: MakeContext<S>,
    settings: Rc<S>,
}

impl<S: Default> ConfiguredRoot<S> {
    pub fn new(plugin: &'static str, parse: Parse<S>, make: MakeContext<S>) -> Self {
        Self {
            plugin,
            parse,
            make,
            settings: Rc::new(S::default()),
        }
    }
}

impl<S> Context for ConfiguredRoot<S> {}

impl<S: 'static> RootContext for ConfiguredRoot<S> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match (self.parse)(&bytes) {
            Ok(settings) => {
                self.settings = Rc::new(settings);
                true
            }
            Err(e) => {
                log::error!("{}: {e}", self.plugin);
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some((self.make)(self.settings.clone()))
    }
}
