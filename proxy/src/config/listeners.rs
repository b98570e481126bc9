//! `listen:` and `listeners:` — where the data plane accepts clients, in plain HTTP or TLS — and
//! `downstream.h2:`, the HTTP/2 limits: the YAML mirror and its validation. Certificates, keys,
//! CA bundles and ticket key files are read here, so a bad one is a config error (refused at
//! start, at `check`, and at reload with the running ones kept).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::runtime::{H2Limits, Listener};
use crate::tls::certs::{read_certificates, CertificateError, ServedCertificate};
use crate::tls::{self, ClientAuth, MinVersion, Resumption, TicketSecret, Tickets, TlsSettings};
use config_diagnostics::{resolve, Problems};

/// Where plain HTTP is served when neither `listen` nor `listeners` is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: String,
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    pub certificates: Vec<CertificateFile>,
    #[serde(default)]
    pub min_version: TlsVersionFile,
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
    #[serde(default)]
    pub strict_sni: bool,
    #[serde(default)]
    pub resumption: ResumptionFile,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM: the leaf first, then intermediates.
    pub chain: String,
    /// PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: String,
    #[serde(default)]
    pub mode: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResumptionFile {
    pub session_cache: usize,
    pub tickets: bool,
    #[serde(with = "humantime_serde")]
    pub ticket_rotation: Duration,
    pub ticket_key_file: Option<String>,
}

impl Default for ResumptionFile {
    fn default() -> Self {
        Self {
            session_cache: 20_000,
            tickets: true,
            ticket_rotation: Duration::from_secs(3600),
            ticket_key_file: None,
        }
    }
}

/// `1.2` or `1.3`, written as a number or a string (`"1.3"`, `TLSv1.3`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersionFile {
    #[default]
    V1_2,
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersionFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsVersionFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("1.2 or 1.3")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v.trim().trim_start_matches("TLSv") {
                    "1.2" => Ok(TlsVersionFile::V1_2),
                    "1.3" => Ok(TlsVersionFile::V1_3),
                    other => Err(E::custom(format!(
                        "TLS {other} is not supported: 1.2 or 1.3"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for TlsVersionFile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        })
    }
}

/// HTTP/2 limits for clients (`downstream.h2`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct H2File {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_pending_reset_streams: usize,
    pub max_local_error_resets: usize,
}

impl Default for H2File {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_size: 32 * 1024,
            initial_stream_window: 65_535,
            initial_connection_window: 1024 * 1024,
            max_pending_reset_streams: 20,
            max_local_error_resets: 1024,
        }
    }
}

/// HTTP/2's largest window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

pub(super) fn h2_limits(file: &H2File, problems: &mut Problems) -> H2Limits {
    let at = |key: &str| format!("downstream.h2.{key}");
    if file.max_concurrent_streams == 0 {
        problems.add(
            at("max_concurrent_streams"),
            "must be at least 1",
            Some("128 is the default; NGINX's http2_max_concurrent_streams is 128"),
        );
    }
    if file.max_header_list_size < 1024 {
        problems.add(
            at("max_header_list_size"),
            "must be at least 1024 bytes",
            Some("the decoded request head's bound; 32768 is the default"),
        );
    }
    for (key, value) in [
        ("initial_stream_window", file.initial_stream_window),
        ("initial_connection_window", file.initial_connection_window),
    ] {
        if !(65_535..=MAX_WINDOW).contains(&value) {
            problems.add(
                at(key),
                format!("{value} is outside 65535..={MAX_WINDOW}"),
                Some("HTTP/2 windows start at 65535 bytes"),
            );
        }
    }
    if file.max_pending_reset_streams == 0 {
        problems.add(
            at("max_pending_reset_streams"),
            "must be at least 1",
            Some("20 is the default"),
        );
    }
    H2Limits {
        max_concurrent_streams: file.max_concurrent_streams,
        max_header_list_size: file.max_header_list_size,
        initial_stream_window: file.initial_stream_window,
        initial_connection_window: file.initial_connection_window,
        max_pending_reset_streams: file.max_pending_reset_streams,
        max_local_error_resets: file.max_local_error_resets,
    }
}

/// Every data-plane listener: `listen` (plain HTTP) first, then `listeners`.
pub(super) fn listeners(
    listen: Option<&str>,
    files: &[ListenerFile],
    base: &Path,
    problems: &mut Problems,
) -> Vec<Listener> {
    let mut out = Vec::new();
    let listen = listen.or(files.is_empty().then_some(DEFAULT_LISTEN));
    if let Some(address) = listen.and_then(|l| problems.socket_addr("listen", l)) {
        out.push(Listener { address, tls: None });
    }
    let now = SystemTime::now();
    for (i, file) in files.iter().enumerate() {
        let at = |key: &str| format!("listeners[{i}].{key}");
        let Some(address) = problems.socket_addr(&at("address"), &file.address) else {
            continue;
        };
        if out.iter().any(|l| l.address == address) {
            problems.add(
                at("address"),
                format!("{address} is listed twice"),
                Some("each address may have one listener (`listen` counts as one)"),
            );
            continue;
        }
        let tls = file
            .tls
            .as_ref()
            .and_then(|tls| tls_settings(&at("tls"), tls, base, now, problems));
        out.push(Listener { address, tls });
    }
    out
}

fn certificate_hint(error: &CertificateError) -> &'static str {
    match error {
        CertificateError::Read { .. } | CertificateError::NoCertificate(_) => {
            "paths are relative to the config file's folder; PEM files"
        }
        CertificateError::Key { .. } => {
            "an ECDSA, Ed25519 or RSA key in PEM (PKCS#8, SEC1 or PKCS#1)"
        }
        CertificateError::KeyMismatch { .. } => {
            "each certificate's key: check the pair with `openssl x509 -noout -pubkey` on both"
        }
        CertificateError::Parse { .. } => "an X.509 certificate in PEM",
        CertificateError::Expired { .. } => {
            "renew it; the old one stays served until a reload brings a valid one"
        }
        CertificateError::NotYetValid { .. } => "check the clock, or wait for its start date",
    }
}

fn tls_settings(
    at: &str,
    file: &ListenerTlsFile,
    base: &Path,
    now: SystemTime,
    problems: &mut Problems,
) -> Option<Arc<TlsSettings>> {
    let before = problems.len();
    if file.certificates.is_empty() {
        problems.add(
            format!("{at}.certificates"),
            "no certificates",
            Some("list at least one { chain: FILE, key: FILE }"),
        );
    }
    let mut certificates = Vec::new();
    for (j, cert) in file.certificates.iter().enumerate() {
        match ServedCertificate::load(&resolve(base, &cert.chain), &resolve(base, &cert.key), now) {
            Ok(served) => certificates.push(served),
            Err(e) => problems.add(
                format!("{at}.certificates[{j}]"),
                e.to_string(),
                Some(certificate_hint(&e)),
            ),
        }
    }
    let mut alpn = Vec::new();
    let mut seen = BTreeSet::new();
    for (j, proto) in file.alpn.iter().enumerate() {
        if !matches!(proto.as_str(), "h2" | "http/1.1") {
            problems.add(
                format!("{at}.alpn[{j}]"),
                format!("unknown protocol `{proto}`"),
                Some("h2 and/or http/1.1, in order of preference"),
            );
        } else if !seen.insert(proto.as_str()) {
            problems.add(
                format!("{at}.alpn[{j}]"),
                format!("`{proto}` is listed twice"),
                None,
            );
        }
        alpn.push(proto.as_bytes().to_vec());
    }
    if file.alpn.is_empty() {
        problems.add(
            format!("{at}.alpn"),
            "no protocols",
            Some("[h2, http/1.1] serves both"),
        );
    }
    let client_auth = file
        .client_auth
        .as_ref()
        .and_then(|auth| client_auth(&format!("{at}.client_auth"), auth, base, problems));
    let resumption = resumption(
        &format!("{at}.resumption"),
        &file.resumption,
        base,
        problems,
    );
    if problems.len() > before {
        return None;
    }
    let min_version = match file.min_version {
        TlsVersionFile::V1_2 => MinVersion::Tls12,
        TlsVersionFile::V1_3 => MinVersion::Tls13,
    };
    match TlsSettings::new(
        certificates,
        file.strict_sni,
        min_version,
        alpn,
        client_auth,
        resumption,
    ) {
        Ok(settings) => Some(Arc::new(settings)),
        Err(e) => {
            problems.add(at, e.to_string(), None);
            None
        }
    }
}

fn client_auth(
    at: &str,
    file: &ClientAuthFile,
    base: &Path,
    problems: &mut Problems,
) -> Option<ClientAuth> {
    let path = resolve(base, &file.ca);
    let certs = match read_certificates(&path) {
        Ok(certs) => certs,
        Err(e) => {
            problems.add(
                format!("{at}.ca"),
                e.to_string(),
                Some("a PEM bundle of the CAs that sign your clients' certificates"),
            );
            return None;
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for (j, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            problems.add(
                format!("{at}.ca"),
                format!("certificate #{} of {}: {e}", j + 1, path.display()),
                Some("CA certificates only"),
            );
        }
    }
    let required = file.mode == ClientAuthMode::Required;
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    match builder.build() {
        Ok(verifier) => Some(ClientAuth {
            ca: path,
            required,
            verifier,
        }),
        Err(e) => {
            problems.add(format!("{at}.ca"), e.to_string(), None);
            None
        }
    }
}

fn resumption(at: &str, file: &ResumptionFile, base: &Path, problems: &mut Problems) -> Resumption {
    if file.ticket_rotation < Duration::from_secs(60) {
        problems.add(
            format!("{at}.ticket_rotation"),
            "must be at least 1m",
            Some("a ticket is honoured for up to two periods; 1h is the default"),
        );
    }
    let secret = file.ticket_key_file.as_ref().and_then(|name| {
        let path = resolve(base, name);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= tls::tickets::MIN_SECRET_BYTES => Some(TicketSecret(bytes)),
            Ok(bytes) => {
                problems.add(
                    format!("{at}.ticket_key_file"),
                    format!(
                        "{} holds {} bytes, fewer than {}",
                        path.display(),
                        bytes.len(),
                        tls::tickets::MIN_SECRET_BYTES
                    ),
                    Some("e.g. `openssl rand 48 > ticket.key`, the same file on every instance"),
                );
                None
            }
            Err(e) => {
                problems.add(
                    format!("{at}.ticket_key_file"),
                    format!("cannot read {}: {e}", path.display()),
                    Some("e.g. `openssl rand 48 > ticket.key`, the same file on every instance"),
                );
                None
            }
        }
    });
    if file.ticket_key_file.is_some() && !file.tickets {
        problems.add(
            format!("{at}.ticket_key_file"),
            "is set but tickets are off",
            Some("remove it, or set tickets: true"),
        );
    }
    Resumption {
        session_cache: file.session_cache,
        tickets: file.tickets.then_some(Tickets {
            rotation: file.ticket_rotation,
            secret,
        }),
    }
}
