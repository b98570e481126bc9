//! Proxy configuration: `file.rs` (the YAML mirror) -> `validate.rs` (every problem at once, as
//! `path: problem (hint)`) -> `runtime.rs` (compiled, immutable, shared behind an `Arc`).

mod file;
mod runtime;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use file::FileConfig;
pub use runtime::{RuntimeConfig, ServerSettings};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub problem: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, problem: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
            hint: hint.map(str::to_string),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Reads, parses and validates a config file; relative paths resolve against its folder.
pub fn load(path: &Path) -> Result<RuntimeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let base = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    from_yaml(&text, &base)
}

/// Parses and validates YAML text; relative paths resolve against `base_dir`.
pub fn from_yaml(text: &str, base_dir: &Path) -> Result<RuntimeConfig, ConfigError> {
    let file = file::parse(text).map_err(|p| ConfigError::Invalid(vec![p]))?;
    validate::validate(&file, base_dir).map_err(ConfigError::Invalid)
}

/// The documented default configuration (what `print-default-config` prints).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/edge.yaml");
