//! The connection to Redis: the first configured address that answers (TLS and ACL login when
//! configured), every command bounded by `command_timeout`, and the two scripts the cluster
//! runs: a lease renewal (a token bucket refilled by Redis's own clock, so instances' clocks
//! never matter) and a heartbeat (instances alive within three sync intervals).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use super::leases::{Grant, Renewal};
use crate::config::redis::RedisSettings;

/// Refill by elapsed time (Redis's clock) up to the burst, charge the debt (the bucket may go
/// negative), grant up to `want` whole tokens. The key expires once it would be full again.
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local debt = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000000) end
tokens = tokens - debt
local granted = 0
if tokens >= 1 then granted = math.min(want, math.floor(tokens)) end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(tokens)}
";

/// This instance is alive now; forget those silent for `ARGV[3]` ms; how many are alive.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no Redis address answered: {0}")]
    Unreachable(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the Redis CA file: {0}")]
    CaFile(std::io::Error),
}

/// `pool_size` live connections to one address (multiplexed: commands pipeline over each),
/// used in turn.
pub struct Link {
    connections: Vec<MultiplexedConnection>,
    next: std::sync::atomic::AtomicUsize,
    command_timeout: Duration,
    lease: Script,
    heartbeat: Script,
    key_prefix: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connections", &self.connections.len())
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Connects to the first address that answers within `connect_timeout`.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, LinkError> {
        Self::connect_sized(settings, settings.pool_size).await
    }

    /// One connection of its own (for blocking reads, which would stall a shared one).
    pub async fn connect_single(settings: &RedisSettings) -> Result<Self, LinkError> {
        Self::connect_sized(settings, 1).await
    }

    async fn connect_sized(settings: &RedisSettings, size: usize) -> Result<Self, LinkError> {
        let mut failures = Vec::new();
        for address in &settings.addresses {
            match Self::connect_pool(settings, *address, size).await {
                Ok(connections) => {
                    return Ok(Self {
                        connections,
                        next: std::sync::atomic::AtomicUsize::new(0),
                        command_timeout: settings.command_timeout,
                        lease: Script::new(LEASE),
                        heartbeat: Script::new(HEARTBEAT),
                        key_prefix: settings.key_prefix.clone(),
                    })
                }
                Err(e) => failures.push(format!("{address}: {e}")),
            }
        }
        Err(LinkError::Unreachable(failures.join("; ")))
    }

    async fn connect_pool(
        settings: &RedisSettings,
        address: std::net::SocketAddr,
        size: usize,
    ) -> Result<Vec<MultiplexedConnection>, LinkError> {
        let mut pool = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            pool.push(Self::connect_one(settings, address).await?);
        }
        Ok(pool)
    }

    pub(crate) fn connection(&self) -> MultiplexedConnection {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.connections[turn % self.connections.len()].clone()
    }

    async fn connect_one(
        settings: &RedisSettings,
        address: std::net::SocketAddr,
    ) -> Result<MultiplexedConnection, LinkError> {
        let host = address.ip().to_string();
        let addr = match &settings.tls {
            Some(tls) => ConnectionAddr::TcpTls {
                host: tls.server_name.clone().unwrap_or(host),
                port: address.port(),
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(host, address.port()),
        };
        let mut redis_info = RedisConnectionInfo::default();
        if let Some(user) = &settings.username {
            redis_info = redis_info.set_username(user.clone());
        }
        if let Some(password) = &settings.password {
            redis_info = redis_info.set_password(password.expose());
        }
        let info = addr.into_connection_info()?.set_redis_settings(redis_info);
        let client = match &settings.tls {
            Some(tls) => {
                let root_cert = std::fs::read(&tls.ca_file).map_err(LinkError::CaFile)?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )?
            }
            None => Client::open(info)?,
        };
        // Our own bounds apply per command (`bounded`, and a blocking read's longer one):
        // the client's default 500 ms response timeout would cut a blocking XREAD.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None);
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        tokio::time::timeout(settings.connect_timeout, connecting)
            .await
            .map_err(|_| LinkError::Timeout(settings.connect_timeout))?
            .map_err(LinkError::from)
    }

    /// Renews one lease.
    pub async fn renew(&self, renewal: &Renewal) -> Result<Grant, LinkError> {
        let mut invocation = self
            .lease
            .key(format!("{}rl:{}", self.key_prefix, renewal.key));
        invocation
            .arg(renewal.limit.rate_per_second)
            .arg(renewal.limit.burst)
            .arg(renewal.want)
            .arg(renewal.debt);
        let mut connection = self.connection();
        let (granted, left): (u64, String) = self
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        Ok(Grant {
            granted,
            tokens_left: left.parse().unwrap_or(0.0),
        })
    }

    /// Says this instance is alive; answers how many are (silent for `horizon`: gone).
    pub async fn heartbeat(&self, instance: &str, horizon: Duration) -> Result<u64, LinkError> {
        let mut invocation = self.heartbeat.key(format!("{}instances", self.key_prefix));
        invocation.arg(instance).arg(horizon.as_millis() as u64);
        let mut connection = self.connection();
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    pub(crate) async fn bounded<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LinkError> {
        tokio::time::timeout(self.command_timeout, command)
            .await
            .map_err(|_| LinkError::Timeout(self.command_timeout))?
            .map_err(LinkError::from)
    }
}
