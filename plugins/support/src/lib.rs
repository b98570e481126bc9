//! The root context the production plugins share: `on_configure` parses the plugin config
//! with the plugin's own checker (a refusal is logged with the key path and fails the start, so
//! `edge-proxy check` names the plugin), and each HTTP context is built around the parsed
//! settings.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

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
