//! The certificates a TLS listener serves: a PEM chain and its private key, checked to match and
//! to be within their validity, with the DNS names (subject alternative names) SNI selects them
//! by. Also the one place that reads X.509 fields (subjects in RFC 2253 form, as Envoy prints
//! them; validity).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::X509Name;

const DAY: i64 = 86_400;

/// Why a certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path} holds no usable private key: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the private key {key} does not belong to the certificate {chain}")]
    KeyMismatch { chain: PathBuf, key: PathBuf },
    #[error("{path}: the certificate cannot be parsed ({reason})")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: the certificate expired {days} day(s) ago")]
    Expired { path: PathBuf, days: i64 },
    #[error("{path}: the certificate is not valid for another {days} day(s)")]
    NotYetValid { path: PathBuf, days: i64 },
}

/// A certificate chain and key ready to serve.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lowercased DNS names of the leaf (`*.example.com` kept as a wildcard).
    pub names: Vec<String>,
    /// The leaf's subject, RFC 2253.
    pub subject: String,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Every certificate of a PEM file, in order (leaf first for a chain).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let read = |source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

impl ServedCertificate {
    /// Loads `chain` (leaf first) and `key`, refusing a key of another certificate, and a leaf
    /// that is expired or not yet valid at `now`.
    pub fn load(chain: &Path, key: &Path, now: SystemTime) -> Result<Self, CertificateError> {
        let certs = read_certificates(chain)?;
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|source| CertificateError::Read {
                path: key.to_path_buf(),
                source,
            })?;
        let signer =
            rustls::crypto::ring::sign::any_supported_type(&private).map_err(|source| {
                CertificateError::Key {
                    path: key.to_path_buf(),
                    source,
                }
            })?;
        let leaf = LeafFacts::read(&certs[0], chain)?;
        let served = CertifiedKey::new(certs, signer);
        match served.keys_match() {
            // `Unknown`: the key cannot name its public half; nothing to compare.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(CertificateError::KeyMismatch {
                    chain: chain.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
        }
        let now = unix_seconds(now);
        if now > leaf.not_after {
            return Err(CertificateError::Expired {
                path: chain.to_path_buf(),
                days: (now - leaf.not_after) / DAY + 1,
            });
        }
        if now < leaf.not_before {
            return Err(CertificateError::NotYetValid {
                path: chain.to_path_buf(),
                days: (leaf.not_before - now) / DAY + 1,
            });
        }
        Ok(Self {
            key: Arc::new(served),
            names: leaf.names,
            subject: leaf.subject,
            not_after: leaf.not_after,
        })
    }

    /// Whole days of validity left at `now`.
    pub fn days_left(&self, now: SystemTime) -> i64 {
        (self.not_after - unix_seconds(now)).div_euclid(DAY)
    }
}

/// What the proxy needs from a leaf certificate.
struct LeafFacts {
    names: Vec<String>,
    subject: String,
    not_before: i64,
    not_after: i64,
}

impl LeafFacts {
    fn read(der: &CertificateDer<'_>, path: &Path) -> Result<Self, CertificateError> {
        let parse = |reason: String| CertificateError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| parse(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(Self {
            names,
            subject: rfc2253(cert.subject()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The subject of a DER certificate in RFC 2253 form (`CN=client,O=CDN`), or `None` when it
/// cannot be parsed.
pub fn subject_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(rfc2253(cert.subject()))
}

/// RFC 2253: the RDNs last to first, `,` between them, `+` within one, specials escaped.
fn rfc2253(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let key = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = attr
                        .as_str()
                        .map(escape_rfc2253)
                        .unwrap_or_else(|_| format!("#{}", hex(attr.as_slice())));
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2253_escapes_specials_and_edge_spaces() {
        assert_eq!(escape_rfc2253("Shop, Inc."), "Shop\\, Inc.");
        assert_eq!(escape_rfc2253(" lead"), "\\ lead");
        assert_eq!(escape_rfc2253("#tag"), "\\#tag");
        assert_eq!(escape_rfc2253("trail "), "trail\\ ");
        assert_eq!(escape_rfc2253("a+b=c"), "a\\+b=c");
    }

    #[test]
    fn days_left_rounds_down_and_goes_negative() {
        let cert = |not_after| ServedCertificate {
            key: Arc::new(CertifiedKey::new(
                Vec::new(),
                rustls::crypto::ring::sign::any_supported_type(&test_key()).unwrap(),
            )),
            names: Vec::new(),
            subject: String::new(),
            not_after,
        };
        let now = UNIX_EPOCH + std::time::Duration::from_secs(100 * DAY as u64);
        assert_eq!(cert(100 * DAY + DAY + 5).days_left(now), 1);
        assert_eq!(cert(100 * DAY + DAY - 5).days_left(now), 0);
        assert_eq!(cert(100 * DAY - 5).days_left(now), -1);
    }

    fn test_key() -> PrivateKeyDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        PrivateKeyDer::try_from(key.serialize_der()).unwrap()
    }
}
