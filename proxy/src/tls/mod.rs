//! TLS for clients (`listeners[].tls`): certificates chosen by SNI ([`resolver`]), minimum
//! version, ALPN (`h2`, `http/1.1`), optional client certificates (authenticated origin pulls),
//! session resumption by tickets ([`tickets`]) and a session cache. rustls with ring, the stack
//! the upstream side uses. The settings are compiled with the configuration (so a bad
//! certificate fails validation, and a reload that brings one is refused); the resumption state
//! (session cache, ticket keys) outlives reloads, so clients keep resuming across them.

pub mod certs;
pub mod client;
pub mod handshake;
pub mod resolver;
pub mod stream;
pub mod tickets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::ServerConfig;

use certs::ServedCertificate;
use resolver::SniResolver;
use tickets::RotatingTicketer;

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Client certificates a listener asks for.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The CA bundle client certificates must chain to.
    pub ca: PathBuf,
    /// Without a certificate the handshake fails (`required`) or goes on (`optional`); a
    /// certificate that does not verify fails it either way.
    pub required: bool,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// The secret of a ticket key file.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketSecret(pub Vec<u8>);

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketSecret({} bytes)", self.0.len())
    }
}

/// Session resumption settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    /// Sessions kept for resumption by id (TLS 1.2) or stateful ticket; 0: none.
    pub session_cache: usize,
    /// Stateless tickets: `None` disables them.
    pub tickets: Option<Tickets>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tickets {
    pub rotation: Duration,
    /// Shared by every instance given the same file; `None`: random keys of this process.
    pub secret: Option<TicketSecret>,
}

/// One TLS listener's settings, compiled (certificates loaded and checked).
#[derive(Debug)]
pub struct TlsSettings {
    pub certificates: Vec<ServedCertificate>,
    pub strict_sni: bool,
    pub min_version: MinVersion,
    /// ALPN protocols in preference order, as on the wire.
    pub alpn: Vec<Vec<u8>>,
    pub client_auth: Option<ClientAuth>,
    pub resumption: Resumption,
    /// The rustls config without its resumption state (which [`ResumptionState`] adds).
    base: Arc<ServerConfig>,
}

/// Why a listener's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of the client listeners: ring, as upstream, with its cipher suites in the
/// server's order of preference (see [`preferred_suites`]).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = preferred_suites(provider.cipher_suites);
    Arc::new(provider)
}

/// AES-128-GCM first, then AES-256-GCM, then ChaCha20-Poly1305 (TLS 1.3, then TLS 1.2), and
/// the server's order wins over the client's (`ignore_client_order`), as Go's TLS stack and
/// the browsers' own offers have it. AES-128 matches the 128-bit strength of X25519 and P-256,
/// and its SHA-256 key schedule runs on the CPU's SHA instructions, where SHA-384's (the
/// AES-256 suite, which rustls and OpenSSL clients offer first) does not: measured here,
/// about a tenth of a handshake's CPU.
fn preferred_suites(
    mut suites: Vec<rustls::SupportedCipherSuite>,
) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite as S;
    let rank = |suite: &rustls::SupportedCipherSuite| match suite.suite() {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    suites.sort_by_key(rank);
    suites
}

impl TlsSettings {
    pub fn new(
        certificates: Vec<ServedCertificate>,
        strict_sni: bool,
        min_version: MinVersion,
        alpn: Vec<Vec<u8>>,
        client_auth: Option<ClientAuth>,
        resumption: Resumption,
    ) -> Result<Self, SetupError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder =
            ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
        let builder = match &client_auth {
            Some(auth) => builder.with_client_cert_verifier(auth.verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut base =
            builder.with_cert_resolver(Arc::new(SniResolver::new(&certificates, strict_sni)));
        base.alpn_protocols = alpn.clone();
        base.ignore_client_order = true;
        Ok(Self {
            certificates,
            strict_sni,
            min_version,
            alpn,
            client_auth,
            resumption,
            base: Arc::new(base),
        })
    }

    /// The rustls config to accept with, resuming through `state`.
    pub fn server_config(&self, state: &ResumptionState) -> Arc<ServerConfig> {
        let mut config = (*self.base).clone();
        config.session_storage = state.cache.clone();
        config.ticketer = state.ticketer.clone();
        if self.resumption.tickets.is_none() && self.resumption.session_cache == 0 {
            // Nothing could honour a ticket: hand none out.
            config.send_tls13_tickets = 0;
        }
        Arc::new(config)
    }
}

/// A listener's session cache and ticket keys: kept across reloads while the settings that
/// made them stay the same.
pub struct ResumptionState {
    pub settings: Resumption,
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl std::fmt::Debug for ResumptionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumptionState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A ticketer that issues nothing (tickets off).
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl ResumptionState {
    pub fn new(settings: &Resumption) -> Arc<Self> {
        let cache: Arc<dyn StoresServerSessions> = if settings.session_cache > 0 {
            ServerSessionMemoryCache::new(settings.session_cache)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let ticketer: Arc<dyn ProducesTickets> = match &settings.tickets {
            Some(Tickets {
                rotation,
                secret: Some(secret),
            }) => Arc::new(RotatingTicketer::shared(&secret.0, *rotation)),
            Some(Tickets {
                rotation,
                secret: None,
            }) => Arc::new(RotatingTicketer::random(*rotation)),
            None => Arc::new(NoTickets),
        };
        Arc::new(Self {
            settings: settings.clone(),
            cache,
            ticketer,
        })
    }

    /// `previous` when it was made from the same settings, else a new state.
    pub fn carry_over(previous: Option<&Arc<Self>>, settings: &Resumption) -> Arc<Self> {
        match previous {
            Some(state) if state.settings == *settings => state.clone(),
            _ => Self::new(settings),
        }
    }
}
