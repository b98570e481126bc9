//! What the proxy knows about a client's TLS connection once the handshake is done (version,
//! SNI, resumption, the verified client certificate's subject), and where a request finds
//! it: a table keyed by the connection's addresses. Pingora hands requests (HTTP/2 streams
//! especially) only the connection's socket and TLS digests, which have no room for our facts;
//! the table is written once per connection and read once per request on TLS connections only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use pingora::protocols::Digest;

/// One client TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// `TLSv1.2` or `TLSv1.3`, as Envoy's `connection.tls_version` says it.
    pub version: &'static str,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The session was resumed (ticket or session id), not fully negotiated.
    pub resumed: bool,
    /// The subject of the client certificate, verified against the listener's CA (RFC 2253).
    pub peer_subject: Option<String>,
}

impl ClientTls {
    /// The facts of a completed server handshake.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        Self {
            version,
            server_name: connection.server_name().map(str::to_string),
            resumed: connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            peer_subject: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| super::certs::subject_of(leaf.as_ref())),
        }
    }
}

/// A connection's addresses: (client, local).
type Key = (SocketAddr, SocketAddr);

/// The live client TLS connections.
#[derive(Debug, Default)]
pub struct ClientTlsTable {
    live: Mutex<HashMap<Key, Arc<ClientTls>>>,
}

/// Keeps a connection's entry while it lives.
#[derive(Debug)]
pub struct Registration {
    table: Arc<ClientTlsTable>,
    key: Key,
    tls: Arc<ClientTls>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self
            .table
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: a new connection may already reuse the addresses.
        if live
            .get(&self.key)
            .is_some_and(|t| Arc::ptr_eq(t, &self.tls))
        {
            live.remove(&self.key);
        }
    }
}

impl ClientTlsTable {
    /// Records `tls` for the connection from `client` to `local` until the registration drops.
    pub fn register(
        self: &Arc<Self>,
        client: SocketAddr,
        local: SocketAddr,
        tls: Arc<ClientTls>,
    ) -> Registration {
        let key = (client, local);
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, tls.clone());
        Registration {
            table: self.clone(),
            key,
            tls,
        }
    }

    /// The TLS facts of the connection a request came on (`None`: plain HTTP).
    pub fn of_request(&self, digest: Option<&Digest>) -> Option<Arc<ClientTls>> {
        let digest = digest?;
        digest.ssl_digest.as_ref()?;
        let socket = digest.socket_digest.as_ref()?;
        let key = (
            *socket.peer_addr()?.as_inet()?,
            *socket.local_addr()?.as_inet()?,
        );
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(subject: &str) -> Arc<ClientTls> {
        Arc::new(ClientTls {
            version: "TLSv1.3",
            server_name: None,
            resumed: false,
            peer_subject: Some(subject.into()),
        })
    }

    #[test]
    fn an_entry_lives_as_long_as_its_registration_and_never_removes_a_successor() {
        let table = Arc::new(ClientTlsTable::default());
        let (client, local) = (
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        );
        let first = table.register(client, local, tls("CN=first"));
        assert_eq!(table.len(), 1);
        // The addresses reused by a new connection before the old one's cleanup ran.
        let second = table.register(client, local, tls("CN=second"));
        drop(first);
        assert_eq!(table.len(), 1, "the successor's entry stays");
        drop(second);
        assert!(table.is_empty());
    }
}
