//! Config diagnostics shared by `edge-proxy` and `origin-service`: read a YAML file, parse it
//! into a serde mirror (`deny_unknown_fields`) with the key path of any error, collect every
//! semantic problem as `path: problem (hint)`, resolve relative paths, and print it all for a CLI.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// sysexits.h EX_CONFIG: what `check` and `run` exit with on an invalid configuration.
pub const EXIT_CONFIG: u8 = 78;

/// One thing wrong with a configuration: `path: problem (hint)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path in the YAML, e.g. `upstreams.catalog.tls.ca_file` or `routes[0].upstream`.
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
    /// Every problem found (empty for read errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Read { .. } => &[],
        }
    }

    /// Prints the error for a command-line user: the file, then one problem per line.
    pub fn report(&self, file: &Path) {
        match self {
            ConfigError::Invalid(problems) => {
                eprintln!("{}: {} problem(s):", file.display(), problems.len());
                for problem in problems {
                    eprintln!("  {problem}");
                }
            }
            ConfigError::Read { .. } => eprintln!("{self}"),
        }
    }
}

/// Reads a config file; returns its text and its folder (canonical when possible), against
/// which relative paths in it resolve.
pub fn read(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let base = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    Ok((text, base))
}

/// `value` against `base` when relative, with `.` and `..` folded lexically (the path need not
/// exist yet), so paths in logs and messages read cleanly.
pub fn resolve(base: &Path, value: &str) -> PathBuf {
    let mut clean = PathBuf::new();
    for part in base.join(value).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !clean.pop() {
                    clean.push(part);
                }
            }
            other => clean.push(other),
        }
    }
    clean
}

/// Most unknown keys reported for one file (each costs one more parse).
const MAX_UNKNOWN_KEYS: usize = 64;

/// Parses YAML into a serde mirror like [`parse_yaml`], but names EVERY unknown key, not just
/// the first (serde stops at the first): each one found is removed and the rest parsed again.
/// Other errors (a bad value) still end the parse, reported after the unknown keys before them.
pub fn parse_yaml_all<T: DeserializeOwned + Default>(text: &str) -> Result<T, Vec<Problem>> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    // Syntax errors come from the text (with their line); the rest from the parsed tree.
    let mut tree: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|err| vec![problem_from_serde("", &err.to_string())])?;
    let mut problems = Vec::new();
    while problems.len() < MAX_UNKNOWN_KEYS {
        let err = match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(parsed) if problems.is_empty() => return Ok(parsed),
            Ok(_) => return Err(problems),
            Err(err) => err,
        };
        let problem = problem_from_serde(&err.path().to_string(), &err.inner().to_string());
        let removed = problem.problem == "unknown key"
            && remove_key(&mut tree, err.path(), &err.inner().to_string());
        problems.push(problem);
        if !removed {
            break;
        }
    }
    Err(problems)
}

/// Removes the unknown key `message` names from the mapping at `path` (the path may end with
/// the key itself); false when it cannot be found.
fn remove_key(
    tree: &mut serde_yaml_ng::Value,
    path: &serde_path_to_error::Path,
    message: &str,
) -> bool {
    use serde_path_to_error::Segment;
    let Some(key) = message
        .split("unknown field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    else {
        return false;
    };
    let segments: Vec<&Segment> = path.iter().collect();
    let parents = match segments.last() {
        Some(Segment::Map { key: last }) if last == key => &segments[..segments.len() - 1],
        _ => &segments[..],
    };
    let mut node = tree;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Map { key }, serde_yaml_ng::Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Segment::Seq { index }, serde_yaml_ng::Value::Sequence(items)) => {
                items.get_mut(*index)
            }
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        node = next;
    }
    match node {
        serde_yaml_ng::Value::Mapping(map) => map.remove(key).is_some(),
        _ => false,
    }
}

/// Parses YAML into a serde mirror; an empty document is `T::default()`. The error names the
/// key path; an unknown key is named in the path itself, with the expected keys as the hint.
pub fn parse_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, Problem> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de)
        .map_err(|err| problem_from_serde(&err.path().to_string(), &err.inner().to_string()))
}

fn problem_from_serde(path: &str, message: &str) -> Problem {
    let path = if path == "." { "" } else { path };
    // The YAML parser prefixes nested errors with its own notion of the path: drop it.
    let message = match message.find("unknown field `") {
        Some(start) => &message[start..],
        None => message
            .strip_prefix(path)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(message),
    };
    if let Some((key, tail)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        // serde_path_to_error ends the path with the unknown key already; older ones did not.
        let full = if path.is_empty() {
            key.to_string()
        } else if path == key || path.ends_with(&format!(".{key}")) {
            path.to_string()
        } else {
            format!("{path}.{key}")
        };
        let expected = tail
            .trim_start_matches(", ")
            .split(" at line ")
            .next()
            .unwrap_or_default();
        return Problem::new(
            full,
            "unknown key",
            Some(expected).filter(|s| !s.is_empty()),
        );
    }
    let hint = (message.contains("time unit") || message.contains("duration"))
        .then_some("durations look like 250ms, 5s, 2m, 1h");
    Problem::new(if path.is_empty() { "<root>" } else { path }, message, hint)
}

/// Collects semantic problems so that a config reports all of them at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, path: impl Into<String>, problem: impl Into<String>, hint: Option<&str>) {
        self.0.push(Problem::new(path, problem, hint));
    }

    /// A duration that must be greater than zero.
    pub fn positive(&mut self, path: &str, value: Duration) {
        if value.is_zero() {
            self.add(path, "must be greater than zero", Some("e.g. 500ms or 5s"));
        }
    }

    /// An `ip:port`; `None` (and a problem) when it is not one.
    pub fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.add(
                    path,
                    format!("`{value}` is not a socket address"),
                    Some("use ip:port, e.g. 127.0.0.1:8443"),
                );
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Problems so far: compare before and after a section to know whether it added any.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Outer {
        inner: Inner,
        name: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn unknown_keys_are_named_with_their_full_path() {
        let p = parse_yaml::<Outer>("inner:\n  cuont: 3\n").unwrap_err();
        assert_eq!(p.to_string(), "inner.cuont: unknown key (expected `count`)");
        assert_eq!(parse_yaml::<Outer>("nmae: x\n").unwrap_err().path, "nmae");
    }

    #[test]
    fn wrong_types_name_their_key_and_empty_is_default() {
        assert_eq!(
            parse_yaml::<Outer>("inner: { count: many }\n")
                .unwrap_err()
                .path,
            "inner.count"
        );
        assert_eq!(parse_yaml::<Outer>("  \n").unwrap().inner.count, 0);
    }

    #[test]
    fn every_unknown_key_is_named_then_the_first_bad_value() {
        let problems = parse_yaml_all::<Outer>("nmae: x\ninner:\n  cuont: 3\n  extra: 1\n")
            .unwrap_err()
            .into_iter()
            .map(|p| p.path)
            .collect::<Vec<_>>();
        assert_eq!(problems, ["nmae", "inner.cuont", "inner.extra"]);
        let problems = parse_yaml_all::<Outer>("bogus: 1\ninner: { count: many }\n").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[1].path, "inner.count");
        assert_eq!(
            parse_yaml_all::<Outer>("inner: { count: 2 }\n")
                .unwrap()
                .inner
                .count,
            2
        );
    }

    #[test]
    fn resolve_folds_dots() {
        assert_eq!(
            resolve(Path::new("/etc/edge"), "../.state/./o"),
            Path::new("/etc/.state/o")
        );
        assert_eq!(
            resolve(Path::new("/etc/edge"), "/abs/x"),
            Path::new("/abs/x")
        );
    }

    #[test]
    fn problems_collect_and_render() {
        let mut p = Problems::default();
        p.positive("a.timeout", Duration::ZERO);
        assert!(p.socket_addr("listen", "nowhere").is_none());
        let all: Vec<String> = p.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(
            all,
            [
                "a.timeout: must be greater than zero (e.g. 500ms or 5s)",
                "listen: `nowhere` is not a socket address (use ip:port, e.g. 127.0.0.1:8443)"
            ]
        );
    }
}
