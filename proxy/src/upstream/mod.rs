//! Named upstreams: their addresses (round-robin), TLS name, and the tuned `PeerOptions` every
//! `HttpPeer` to them carries (timeouts, idle timeout in the pool, TCP keep-alive).
//! Certificate and hostname verification stay ON: rustls then reuses one client config, and so
//! resumes TLS sessions (see `RuntimeConfig::upstream_ca_file`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::protocols::TcpKeepalive;
use pingora::upstreams::peer::HttpPeer;

/// Connection tuning shared by every peer of one upstream.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub total_connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Whole response (head and body) from the moment the request is sent; read_timeout only
    /// bounds each read, so a trickling upstream could hold a request forever.
    pub response_timeout: Duration,
    /// (idle, interval, count)
    pub tcp_keepalive: Option<(Duration, Duration, usize)>,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub addresses: Vec<SocketAddr>,
    /// `Some(sni)` when the upstream speaks TLS.
    pub sni: Option<String>,
    /// Replaces the client's Host header when set.
    pub host_header: Option<String>,
    /// Another edge-proxy instance (a shield tier): its `X-Cache` is shown after ours.
    pub shield: bool,
    pub settings: PeerSettings,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(
        name: &str,
        addresses: Vec<SocketAddr>,
        sni: Option<String>,
        host_header: Option<String>,
        settings: PeerSettings,
    ) -> Self {
        Self {
            name: name.to_string(),
            addresses,
            sni,
            host_header,
            shield: false,
            settings,
            next: AtomicUsize::new(0),
        }
    }

    /// Marks the upstream as a shield tier (or not).
    pub fn shielded(mut self, shield: bool) -> Self {
        self.shield = shield;
        self
    }

    /// The next address, round-robin. Validation guarantees at least one.
    fn next_address(&self) -> Option<SocketAddr> {
        let n = self.addresses.len();
        (n > 0).then(|| self.addresses[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }

    /// A peer for the next address with this upstream's tuned options.
    pub fn peer(&self) -> Option<HttpPeer> {
        let address = self.next_address()?;
        let mut peer = HttpPeer::new(
            address,
            self.sni.is_some(),
            self.sni.clone().unwrap_or_default(),
        );
        let s = &self.settings;
        let options = &mut peer.options;
        options.connection_timeout = Some(s.connect_timeout);
        options.total_connection_timeout = Some(s.total_connect_timeout);
        options.read_timeout = Some(s.read_timeout);
        options.write_timeout = Some(s.write_timeout);
        options.idle_timeout = Some(s.idle_timeout);
        options.verify_cert = true;
        options.verify_hostname = true;
        options.tcp_keepalive = s.tcp_keepalive.map(|(idle, interval, count)| TcpKeepalive {
            idle,
            interval,
            count,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::ZERO,
        });
        Some(peer)
    }
}
