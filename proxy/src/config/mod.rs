//! Proxy configuration: `file.rs` (the YAML mirror) -> `validate.rs` (every problem at once, as
//! `path: problem (hint)`) -> `runtime.rs` (compiled, immutable, shared behind an `Arc`).

mod file;
mod listeners;
mod plugins;
pub mod redis;
mod runtime;
mod validate;

use std::path::Path;

pub use config_diagnostics::{ConfigError, Problem};
pub use file::FileConfig;
pub use runtime::{DownstreamLimits, H2Limits, Listener, RuntimeConfig, ServerSettings};

/// Reads, parses and validates a config file; relative paths resolve against its folder.
pub fn load(path: &Path) -> Result<RuntimeConfig, ConfigError> {
    let (text, base) = config_diagnostics::read(path)?;
    from_yaml(&text, &base)
}

/// Parses and validates YAML text; relative paths resolve against `base_dir`.
pub fn from_yaml(text: &str, base_dir: &Path) -> Result<RuntimeConfig, ConfigError> {
    let file: FileConfig =
        config_diagnostics::parse_yaml_all(text).map_err(ConfigError::Invalid)?;
    validate::validate(&file, base_dir).map_err(ConfigError::Invalid)
}

/// The documented default configuration (what `print-default-config` prints).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/edge.yaml");

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use std::path::Path;

    fn load(text: &str) {
        // Every outcome is fine but a panic; problems always name a key path or the document.
        if let Err(super::ConfigError::Invalid(problems)) =
            super::from_yaml(text, Path::new("/nonexistent"))
        {
            assert!(!problems.is_empty());
        }
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("~".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("-1".to_string()),
            Just("0s".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"\"".to_string()),
            Just("{ a: [1, {b: c}] }".to_string()),
            "[a-z0-9:./ ]{0,12}",
            any::<u64>().prop_map(|n| n.to_string()),
        ]
    }

    proptest! {
        /// Arbitrary text: a config or problems, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            load(&text);
        }

        /// The shipped config with one line's value replaced (keys kept, so the damage lands
        /// deep in the tree), or one line dropped: a config or problems, never a panic.
        #[test]
        fn damaged_shipped_configs_never_panic(line in any::<prop::sample::Index>(), new_value in value(), drop_it: bool) {
            let lines: Vec<&str> = super::DEFAULT_CONFIG.lines().collect();
            let at = line.index(lines.len());
            let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            if drop_it {
                damaged.remove(at);
            } else if let Some((key, _)) = lines[at].split_once(": ") {
                damaged[at] = format!("{key}: {new_value}");
            }
            load(&damaged.join("\n"));
        }
    }
}
