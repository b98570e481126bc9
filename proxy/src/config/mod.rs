//! Proxy configuration: `file.rs` (the YAML mirror) -> `validate.rs` (every problem at once, as
//! `path: problem (hint)`) -> `runtime.rs` (compiled, immutable, shared behind an `Arc`).

mod file;
mod plugins;
mod runtime;
mod validate;

use std::path::Path;

pub use config_diagnostics::{ConfigError, Problem};
pub use file::FileConfig;
pub use runtime::{DownstreamLimits, RuntimeConfig, ServerSettings};

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
