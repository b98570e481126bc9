//! `redis:` — the store several edge instances share (cluster-wide rate limits, purge fan-out):
//! the YAML mirror and its validation. Off unless set: one instance without Redis behaves as if
//! the section did not exist.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use config_diagnostics::{resolve, Problems};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// Tried in order: the first that answers is used; on loss, the next ones too.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub tls: Option<RedisTlsFile>,
    /// ACL user (Redis 6+); with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password (kept out of the config).
    #[serde(default)]
    pub password_file: Option<String>,
    /// Multiplexed connections per instance (commands pipeline over each).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often each instance reconciles with Redis (leases, heartbeats).
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// What cluster rules enforce while Redis is away.
    #[serde(default)]
    pub on_unavailable: Unavailable,
    /// How long a purge waits for the other instances to say they applied it.
    #[serde(default = "default_purge_ack_timeout", with = "humantime_serde")]
    pub purge_ack_timeout: Duration,
    /// Prefix of every key and stream this proxy writes (several clusters can share a Redis).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsFile {
    /// PEM bundle the server's certificate must chain to.
    pub ca_file: String,
    /// The name checked in the server's certificate (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// While Redis is unreachable, each instance enforces a cluster rule on its own with...
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// ...the rule divided by the instances last seen alive (the cluster total stays about
    /// the rule's; an instance taking more than its share of the traffic refuses early).
    #[default]
    LocalShare,
    /// ...the whole rule (no instance refuses early; the cluster may allow N times the rule).
    LocalFull,
}

fn default_pool_size() -> usize {
    2
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_command_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_sync_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_purge_ack_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_key_prefix() -> String {
    "edge:".into()
}

/// The validated section.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    pub addresses: Vec<SocketAddr>,
    pub tls: Option<RedisTls>,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub sync_interval: Duration,
    pub on_unavailable: Unavailable,
    pub purge_ack_timeout: Duration,
    pub key_prefix: String,
}

/// The Redis password (read from `password_file`); never shown in Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<from password_file>")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisTls {
    pub ca_file: PathBuf,
    pub server_name: Option<String>,
}

pub(super) fn redis(
    file: Option<&RedisFile>,
    base: &Path,
    problems: &mut Problems,
) -> Option<RedisSettings> {
    let file = file?;
    if file.addresses.is_empty() {
        problems.add(
            "redis.addresses",
            "is empty",
            Some("name at least one host:port, e.g. [127.0.0.1:6379], or remove `redis:`"),
        );
    }
    let addresses: Vec<SocketAddr> = file
        .addresses
        .iter()
        .enumerate()
        .filter_map(|(i, a)| problems.socket_addr(&format!("redis.addresses[{i}]"), a))
        .collect();
    let tls = file.tls.as_ref().map(|tls| {
        let ca_file = resolve(base, &tls.ca_file);
        if !ca_file.is_file() {
            problems.add(
                "redis.tls.ca_file",
                format!("{} is not a readable file", ca_file.display()),
                Some("a PEM bundle of the CA that signed the Redis server's certificate"),
            );
        }
        RedisTls {
            ca_file,
            server_name: tls.server_name.clone(),
        }
    });
    let password = file.password_file.as_ref().and_then(|p| {
        let path = resolve(base, p);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(Password(
                text.lines().next().unwrap_or_default().to_string(),
            )),
            Err(e) => {
                problems.add(
                    "redis.password_file",
                    format!("{}: {e}", path.display()),
                    Some("a file whose first line is the Redis password"),
                );
                None
            }
        }
    });
    if file.username.is_some() && file.password_file.is_none() {
        problems.add(
            "redis.username",
            "is set without redis.password_file",
            Some("an ACL user authenticates with a password: add password_file"),
        );
    }
    if !(1..=64).contains(&file.pool_size) {
        problems.add(
            "redis.pool_size",
            format!("{} is out of range", file.pool_size),
            Some("between 1 and 64 multiplexed connections (2 is plenty)"),
        );
    }
    problems.positive("redis.connect_timeout", file.connect_timeout);
    problems.positive("redis.command_timeout", file.command_timeout);
    problems.positive("redis.purge_ack_timeout", file.purge_ack_timeout);
    if file.sync_interval < Duration::from_millis(10)
        || file.sync_interval > Duration::from_secs(10)
    {
        problems.add(
            "redis.sync_interval",
            format!("{:?} is out of range", file.sync_interval),
            Some("between 10ms and 10s; 100ms keeps the cluster view fresh at little cost"),
        );
    }
    if file.key_prefix.is_empty() {
        problems.add(
            "redis.key_prefix",
            "is empty",
            Some("keep a prefix such as `edge:` so this proxy's keys are recognisable"),
        );
    }
    Some(RedisSettings {
        addresses,
        tls,
        username: file.username.clone(),
        password,
        pool_size: file.pool_size,
        connect_timeout: file.connect_timeout,
        command_timeout: file.command_timeout,
        sync_interval: file.sync_interval,
        on_unavailable: file.on_unavailable,
        purge_ack_timeout: file.purge_ack_timeout,
        key_prefix: file.key_prefix.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (Option<RedisSettings>, Vec<String>) {
        let file: RedisFile = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Problems::default();
        let settings = redis(Some(&file), Path::new("/"), &mut problems);
        let text = problems
            .into_vec()
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        (settings, text)
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let (settings, problems) = check("addresses: [127.0.0.1:6379]");
        assert!(problems.is_empty(), "{problems:?}");
        let settings = settings.unwrap();
        assert_eq!(settings.sync_interval, Duration::from_millis(100));
        assert_eq!(settings.on_unavailable, Unavailable::LocalShare);
        assert_eq!(settings.pool_size, 2);
        assert_eq!(settings.key_prefix, "edge:");
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, problems) = check(
            "addresses: [nowhere]\nsync_interval: 1ms\npool_size: 0\nusername: edge\nkey_prefix: ''",
        );
        let all = problems.join("\n");
        for key in [
            "redis.addresses[0]",
            "redis.sync_interval",
            "redis.pool_size",
            "redis.username",
            "redis.key_prefix",
        ] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis.pass");
        std::fs::write(&file, "s3cret-redis-password\n").unwrap();
        let (settings, problems) = check(&format!(
            "addresses: [127.0.0.1:6379]\nusername: edge\npassword_file: {}",
            file.display()
        ));
        assert!(problems.is_empty(), "{problems:?}");
        let settings = settings.unwrap();
        assert_eq!(
            settings.password.as_ref().map(Password::expose),
            Some("s3cret-redis-password")
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_modes_are_refused() {
        assert!(serde_yaml_ng::from_str::<RedisFile>(
            "addresses: [127.0.0.1:6379]\non_unavailable: fail_open"
        )
        .is_err());
    }
}
