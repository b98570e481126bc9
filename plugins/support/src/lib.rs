//! The root context the production plugins share: `on_configure` parses the plugin config
//! with the plugin's own checker (a refusal is logged with the key path and fails the start, so
//! `edge-proxy check` names the plugin) and builds the VM's working state from it (settings,
//! per-VM caches), around which each HTTP context is made. Also [`CREATE_ONLY`], the CAS token
//! that makes a shared-data write create-if-absent, and [`decimal`] (integers without `fmt`).

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

/// The property an authenticated client id is published under (path `auth.client_id`): the
/// auth filter sets it, the rate limiter and the metrics read it.
pub const CLIENT_ID_PROPERTY: [&str; 2] = ["auth", "client_id"];

/// The client id a filter before this one published, if any.
pub fn published_client_id() -> Option<String> {
    proxy_wasm::hostcalls::get_property(CLIENT_ID_PROPERTY.to_vec())
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|id| !id.is_empty())
}

/// A production plugin: its name, its config checker, the working state a VM builds from the
/// settings (what its requests share: settings, caches) and the HTTP context of one request.
pub trait ConfiguredPlugin: 'static {
    const NAME: &'static str;
    type Settings: Default;
    type State;

    /// Parses raw config bytes into settings, or says which key is wrong.
    fn parse(bytes: &[u8]) -> Result<Self::Settings, String>;

    fn build(settings: Rc<Self::Settings>) -> Self::State;

    fn context(state: &Self::State) -> Box<dyn HttpContext>;
}

/// Registers `P`'s root context: call it from `proxy_wasm::main!`.
pub fn register<P: ConfiguredPlugin>() {
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ConfiguredRoot::<P> {
            state: P::build(Rc::default()),
        })
    });
}

/// The root context of a [`ConfiguredPlugin`] (one per VM).
struct ConfiguredRoot<P: ConfiguredPlugin> {
    state: P::State,
}

impl<P: ConfiguredPlugin> Context for ConfiguredRoot<P> {}

impl<P: ConfiguredPlugin> RootContext for ConfiguredRoot<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match P::parse(&bytes) {
            Ok(settings) => {
                self.state = P::build(Rc::new(settings));
                true
            }
            Err(e) => {
                log::error!("{}: {e}", P::NAME);
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(P::context(&self.state))
    }
}

/// A fast, unkeyed hasher (the Fx hash of rustc) for maps whose keys an attacker cannot choose
/// into existence (verified credentials, bounded label sets): the default SipHash costs more
/// than the lookup it protects there.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// `n` in decimal, written without `core::fmt` (header values on the hot path).
pub fn decimal(mut n: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn the_fast_map_finds_what_it_holds() {
        let mut map = super::FastMap::default();
        for i in 0..1000u32 {
            map.insert(format!("key-{i}"), i);
        }
        assert!((0..1000u32).all(|i| map.get(format!("key-{i}").as_str()) == Some(&i)));
        assert_eq!(map.get("key-1000"), None);
    }

    #[test]
    fn decimals_match_the_formatter() {
        let mut buffer = [0; 20];
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut buffer), n.to_string());
        }
    }
}
