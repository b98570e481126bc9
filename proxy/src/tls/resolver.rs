//! Which certificate a client gets: by the name it sent (SNI), exact names before wildcards
//! (`*.example.com` covers one label), else the listener's first certificate, or a refused
//! handshake when the listener is `strict_sni`.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::ServedCertificate;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Served when the name matches nothing (`None`: strict SNI).
    fallback: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The first certificate naming a host wins it; the first certificate is the fallback
    /// unless `strict`.
    pub fn new(certificates: &[ServedCertificate], strict: bool) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certificates {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name.clone()),
                }
                .or_insert_with(|| cert.key.clone());
            }
        }
        let fallback = if strict {
            None
        } else {
            certificates.first().map(|c| c.key.clone())
        };
        Self {
            exact,
            wildcard,
            fallback,
        }
    }

    /// The certificate for `server_name` (none sent: `None`).
    pub fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else {
            return self.fallback.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        name.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .cloned()
            .or_else(|| self.fallback.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.select(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> ServedCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        ServedCertificate {
            key: Arc::new(CertifiedKey::new(
                Vec::new(),
                rustls::crypto::ring::sign::any_supported_type(&der).unwrap(),
            )),
            names: names.iter().map(|n| n.to_string()).collect(),
            subject: String::new(),
            not_after: 0,
        }
    }

    #[test]
    fn exact_names_beat_wildcards_and_the_first_certificate_is_the_fallback() {
        let shop = cert(&["shop.example"]);
        let wild = cert(&["*.cdn.example", "cdn.example"]);
        let resolver = SniResolver::new(&[shop.clone(), wild.clone()], false);
        let is = |got: Option<Arc<CertifiedKey>>, want: &ServedCertificate| {
            got.is_some_and(|k| Arc::ptr_eq(&k, &want.key))
        };
        assert!(is(resolver.select(Some("shop.example")), &shop));
        assert!(is(resolver.select(Some("SHOP.example.")), &shop));
        assert!(is(resolver.select(Some("a.cdn.example")), &wild));
        assert!(is(resolver.select(Some("cdn.example")), &wild));
        // A wildcard covers exactly one label.
        assert!(is(resolver.select(Some("a.b.cdn.example")), &shop));
        assert!(is(resolver.select(Some("other.example")), &shop));
        assert!(is(resolver.select(None), &shop));
    }

    #[test]
    fn strict_sni_serves_only_named_hosts() {
        let resolver = SniResolver::new(&[cert(&["shop.example"])], true);
        assert!(resolver.select(Some("shop.example")).is_some());
        assert!(resolver.select(Some("other.example")).is_none());
        assert!(resolver.select(None).is_none());
    }
}
