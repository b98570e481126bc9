//! Terminating client TLS on the data plane: which listener a connection came in on (by its
//! local address), the handshake under a deadline with that listener's current certificates, and
//! what it yields: the decrypted stream for Pingora (whose ALPN protocol sends it to Pingora's
//! HTTP/2 or HTTP/1 server), and the connection's facts registered for its requests. Handshakes are counted by kind (`full`,
//! `resumed`) and failures by reason (`timeout`, `refused`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::Stream;

use super::client::{ClientTls, ClientTlsTable, Registration};
use super::stream::ClientTlsStream;
use crate::generation::Current;
use crate::metrics::Metrics;

/// A data-plane listener: where it listens and whether it speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerAddress {
    pub address: SocketAddr,
    pub tls: bool,
}

/// A connection ready for HTTP.
#[derive(Debug)]
pub struct Accepted {
    pub stream: Stream,
    /// The TLS facts, registered while the connection lives (`None`: plain HTTP).
    pub registration: Option<Registration>,
}

#[derive(Debug)]
pub struct Terminator {
    listeners: Vec<ListenerAddress>,
    any_tls: bool,
    current: Current,
    table: Arc<ClientTlsTable>,
    metrics: Arc<Metrics>,
    /// The whole handshake must be done within this (the request head deadline).
    timeout: Duration,
}

impl Terminator {
    pub fn new(
        listeners: Vec<ListenerAddress>,
        current: Current,
        table: Arc<ClientTlsTable>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Self {
            any_tls: listeners.iter().any(|l| l.tls),
            listeners,
            current,
            table,
            metrics,
            timeout,
        }
    }

    /// The listener `local` belongs to: the exact address, else one on the same port bound to
    /// every address.
    fn listener_of(&self, local: SocketAddr) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.address == local)
            .or_else(|| {
                self.listeners.iter().position(|l| {
                    l.address.port() == local.port() && l.address.ip().is_unspecified()
                })
            })
    }

    /// Terminates TLS when the connection came in on a TLS listener; `None` when the handshake
    /// failed (the connection is closed).
    pub async fn accept(&self, stream: Stream) -> Option<Accepted> {
        let plain = |stream| {
            Some(Accepted {
                stream,
                registration: None,
            })
        };
        if !self.any_tls {
            return plain(stream);
        }
        let socket = stream.get_socket_digest();
        let addresses = socket
            .as_ref()
            .and_then(|s| Some((*s.peer_addr()?.as_inet()?, *s.local_addr()?.as_inet()?)));
        let Some((client, local)) = addresses else {
            tracing::warn!("a client connection without addresses: closed");
            return None;
        };
        let index = self.listener_of(local)?;
        let generation = self.current.load();
        let Some(listener_tls) = generation.tls.get(index).and_then(Option::as_ref) else {
            return plain(stream);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(listener_tls.config.clone());
        drop(generation);
        let tls = match tokio::time::timeout(self.timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.count_failure("refused");
                tracing::debug!(%client, error = %e, "client TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.count_failure("timeout");
                return None;
            }
        };
        let facts = Arc::new(ClientTls::of(tls.get_ref().1));
        self.metrics
            .downstream_tls_handshakes
            .with_label_values(&[if facts.resumed { "resumed" } else { "full" }])
            .inc();
        Some(Accepted {
            stream: Box::new(ClientTlsStream::new(tls)),
            registration: Some(self.table.register(client, local, facts)),
        })
    }

    fn count_failure(&self, reason: &str) {
        self.metrics
            .downstream_tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    }
}
