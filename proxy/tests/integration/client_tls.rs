//! HTTPS and HTTP/2 for clients: real TLS clients (rustls, reqwest, curl) against TLS listeners
//! with certificates from a test CA minted here (rcgen): SNI, client certificates, minimum
//! version, resumption (also across instances sharing a ticket key file), h2 multiplexing, and
//! certificates swapped by a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_proxy::RunningProxy;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    catalog_upstream, eventually_metric_at, free_port, metric_at, plugin_wasm, Origin,
};

/// A CA that signs server and client certificates into a folder (the Redis TLS test uses it
/// too).
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate's PEM file.
    pub ca_file: PathBuf,
}

fn name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organization);
    dn
}

impl Pki {
    pub fn new(dir: &Path, label: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = name(&format!("{label} CA"), "Edge tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.join(format!("{label}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            ca_file,
        }
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `names` as `file.pem` / `file.key` (expired when asked).
    pub fn server(&self, file: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = name(names[0], "Shirt Shop");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let (cert, key) = self.sign(params);
        let (chain, key_file) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&chain, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        (chain, key_file)
    }

    /// A client certificate (CN, O) for a rustls client.
    fn client(&self, common_name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = name(common_name, "Example CDN");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = self.sign(params);
        (
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
    }
}

/// A rustls client trusting `ca`, with an optional client certificate, offering `alpn`.
fn client_config(
    ca: &Path,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn all_versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::ALL_VERSIONS
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("handshake timed out")))
}

/// One HTTP/1.1 request over an established TLS stream (the connection closes after it).
struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

async fn get_over(mut stream: ClientStream, path: &str, headers: &str) -> std::io::Result<Answer> {
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: shop.example\r\n{headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut bytes = Vec::new();
    // A peer closing without close_notify still delivered what it sent.
    let _ = stream.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok(Answer {
        status,
        head: head.to_string(),
    })
}

/// The cipher suite a handshake settled on.
fn suite(stream: &ClientStream) -> Option<rustls::CipherSuite> {
    stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|s| s.suite())
}

/// The leaf certificate the server presented: its DNS names.
fn presented_names(stream: &ClientStream) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let leaf = &stream.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// A proxy with a TLS listener in front of the origin (catalog cached, the conformance
/// plugin echoing the connection's properties with `x-probe: tls`). `tls` is the listener's
/// `tls:` mapping body (flow style).
struct TlsProxy {
    proxy: Option<RunningProxy>,
    https: SocketAddr,
    admin: SocketAddr,
    config_file: PathBuf,
}

fn tls_proxy_yaml(dir: &Path, origin: &Origin, https: SocketAddr, tls: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period: 0s, graceful_shutdown_timeout: 2s, upgrade_sock: {sock} }}\n\
         listen: 127.0.0.1:{plain}\n\
         listeners:\n  - address: {https}\n    tls: {tls}\n\
         access_log: off\n\
         admin: {{ listen: 127.0.0.1:{admin} }}\n\
         upstreams:\n{upstream}\n\
         routes:\n  - {{ name: catalog, path_prefix: /api/, upstream: catalog, plugins: [probe], \
         cache: {{ key_query_params: [category], default_ttl: 60s }} }}\n\
         plugins:\n  - {{ name: probe, module: {wasm}, config: {{ greeting: hi }} }}\n",
        sock = dir.join("upgrade.sock").display(),
        plain = free_port(),
        admin = free_port(),
        upstream = catalog_upstream(origin.origin.local_addr(), &origin.ca, ""),
        wasm = plugin_wasm("conformance").display(),
    )
}

impl TlsProxy {
    fn start(dir: &Path, origin: &Origin, tls: &str) -> Self {
        let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_file = dir.join(format!("edge-{}.yaml", https.port()));
        std::fs::write(&config_file, tls_proxy_yaml(dir, origin, https, tls)).unwrap();
        let proxy = RunningProxy::start_from_file(&config_file).unwrap();
        Self {
            admin: proxy.admin,
            proxy: Some(proxy),
            https,
            config_file,
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        metric_at(&http, &format!("http://{}/metrics", self.admin), series).await
    }

    /// Waits (up to 5 s) for a series to reach `expected`: the proxy counts a handshake after
    /// the client has seen its outcome.
    async fn eventually(&self, series: &str, expected: f64) -> f64 {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        eventually_metric_at(
            &http,
            &format!("http://{}/metrics", self.admin),
            series,
            expected,
        )
        .await
    }

    async fn stop(mut self) {
        if let Some(proxy) = self.proxy.take() {
            tokio::task::spawn_blocking(move || proxy.stop())
                .await
                .unwrap();
        }
    }
}

fn certificates(files: &[(PathBuf, PathBuf)]) -> String {
    let list: Vec<String> = files
        .iter()
        .map(|(chain, key)| format!("{{ chain: {}, key: {} }}", chain.display(), key.display()))
        .collect();
    format!("[{}]", list.join(", "))
}

/// HTTPS through the plugins and the cache, over HTTP/1.1 and HTTP/2 (reqwest, ALPN): the
/// second request is a hit, plugins see `https` and the protocol, every stream of 64 concurrent
/// HTTP/2 requests is answered over one connection (one handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_h2_requests_go_through_plugins_and_the_cache() {
    let origin = Origin::start(50, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let shop = pki.server("shop", &["shop.example"], false);
    let proxy = TlsProxy::start(
        dir.path(),
        &origin,
        &format!("{{ certificates: {} }}", certificates(&[shop])),
    );
    let client = |h2: bool| {
        let builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_file).unwrap()).unwrap(),
            )
            .resolve("shop.example", proxy.https)
            .no_proxy();
        if h2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        }
        .build()
        .unwrap()
    };
    let url = format!(
        "https://shop.example:{}/api/v1/products?category=polo",
        proxy.https.port()
    );
    let h1 = client(false);
    let first = h1.get(&url).header("x-probe", "tls").send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.version(), reqwest::Version::HTTP_11);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(first.headers()["x-seen-scheme"], "https");
    assert_eq!(first.headers()["x-seen-protocol"], "HTTP/1.1");
    assert_eq!(first.headers()["x-seen-tls-version"], "TLSv1.3");
    assert_eq!(first.headers()["x-seen-sni"], "shop.example");
    assert_eq!(first.headers()["x-seen-mtls"], "false");
    assert_eq!(first.headers()["x-seen-peer-subject"], "-");
    let body = first.bytes().await.unwrap();
    let second = h1.get(&url).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(
        second.bytes().await.unwrap(),
        body,
        "byte-identical from the cache"
    );

    let h2 = client(true);
    let handshakes_before = proxy
        .metric("edge_downstream_tls_handshakes_total{kind=\"full\"}")
        .await;
    let requests = (0..64).map(|_| {
        let (h2, url) = (h2.clone(), url.clone());
        tokio::spawn(async move { h2.get(&url).header("x-probe", "tls").send().await.unwrap() })
    });
    for answer in futures::future::join_all(requests).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        assert_eq!(answer.headers()["x-seen-protocol"], "HTTP/2");
        assert_eq!(answer.headers()["x-cache"], "HIT");
        assert_eq!(answer.bytes().await.unwrap(), body);
    }
    assert_eq!(
        proxy
            .metric("edge_downstream_tls_handshakes_total{kind=\"full\"}")
            .await,
        handshakes_before + 1.0,
        "64 streams on one connection"
    );
    proxy.stop().await;
}

/// `curl --http2 --cacert`: the client operators reach for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_catalog_over_h2_with_the_test_ca() {
    let origin = Origin::start(50, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let shop = pki.server("shop", &["shop.example"], false);
    let proxy = TlsProxy::start(
        dir.path(),
        &origin,
        &format!("{{ certificates: {} }}", certificates(&[shop])),
    );
    let port = proxy.https.port();
    let (ca, https) = (pki.ca_file.clone(), proxy.https);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--http2", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("shop.example:{port}:{}", https.ip())])
            .args(["--write-out", "\n%{http_version} %{http_code}"])
            .arg(format!(
                "https://shop.example:{port}/api/v1/products?category=polo"
            ))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.trim_end().ends_with("2 200"), "{stdout}");
    assert!(stdout.contains("\"items\""), "{stdout}");
    proxy.stop().await;
}

/// SNI picks the certificate (exact name, wildcard); an unknown name gets the first
/// certificate (and a verifying client refuses it), or, with `strict_sni`, no handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_and_strict_sni_refuses_unknown_names() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let shop = pki.server("shop", &["shop.example"], false);
    let cdn = pki.server("cdn", &["*.cdn.example"], false);
    let files = certificates(&[shop, cdn]);
    let lenient = TlsProxy::start(dir.path(), &origin, &format!("{{ certificates: {files} }}"));
    let strict = TlsProxy::start(
        dir.path(),
        &origin,
        &format!("{{ certificates: {files}, strict_sni: true }}"),
    );
    let client = client_config(&pki.ca_file, None, all_versions());

    let stream = handshake(lenient.https, "shop.example", client.clone())
        .await
        .unwrap();
    assert_eq!(presented_names(&stream), ["shop.example"]);
    let stream = handshake(lenient.https, "img.cdn.example", client.clone())
        .await
        .unwrap();
    assert_eq!(presented_names(&stream), ["*.cdn.example"]);
    let answer = get_over(stream, "/api/v1/products?category=polo", "")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);

    let wrong = handshake(lenient.https, "other.example", client.clone()).await;
    let error = wrong.expect_err("the shop certificate does not name other.example");
    assert!(error.to_string().contains("not valid for name"), "{error}");

    assert!(handshake(strict.https, "shop.example", client.clone())
        .await
        .is_ok());
    let refused = handshake(strict.https, "other.example", client.clone()).await;
    assert!(
        refused.is_err(),
        "strict SNI: no certificate for other.example"
    );
    assert_eq!(
        strict
            .eventually(
                "edge_downstream_tls_handshake_failures_total{reason=\"refused\"}",
                1.0
            )
            .await,
        1.0
    );
    lenient.stop().await;
    strict.stop().await;
}

/// `client_auth: required`: no certificate, or one from another CA, and the handshake fails;
/// a CDN's certificate passes and plugins see its subject (RFC 2253, as Envoy prints it).
/// `optional`: no certificate is fine (mTLS false), a bad one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_or_optional_and_plugins_see_the_subject() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let clients = Pki::new(dir.path(), "cdn-clients");
    let stranger = Pki::new(dir.path(), "stranger");
    let files = certificates(&[pki.server("shop", &["shop.example"], false)]);
    let auth = |mode: &str| {
        format!(
            "{{ certificates: {files}, client_auth: {{ ca: {}, mode: {mode} }} }}",
            clients.ca_file.display()
        )
    };
    let required = TlsProxy::start(dir.path(), &origin, &auth("required"));
    let optional = TlsProxy::start(dir.path(), &origin, &auth("optional"));
    let path = "/api/v1/products?category=polo";
    let anonymous = client_config(&pki.ca_file, None, all_versions());
    let cdn = client_config(
        &pki.ca_file,
        Some(clients.client("cdn-pull")),
        all_versions(),
    );
    let impostor = client_config(
        &pki.ca_file,
        Some(stranger.client("cdn-pull")),
        all_versions(),
    );

    // TLS 1.3 reports a refused client certificate after the client's handshake is done:
    // the refusal shows as no answer.
    for (who, config) in [("no certificate", &anonymous), ("another CA", &impostor)] {
        let answered = match handshake(required.https, "shop.example", config.clone()).await {
            Ok(stream) => get_over(stream, path, "").await.is_ok(),
            Err(_) => false,
        };
        assert!(!answered, "required client auth let a client with {who} in");
    }
    let stream = handshake(required.https, "shop.example", cdn.clone())
        .await
        .unwrap();
    let answer = get_over(stream, path, "x-probe: tls\r\n").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-seen-mtls"), Some("true"));
    assert_eq!(
        answer.header("x-seen-peer-subject"),
        Some("O=Example CDN,CN=cdn-pull")
    );

    let stream = handshake(optional.https, "shop.example", anonymous.clone())
        .await
        .unwrap();
    let answer = get_over(stream, path, "x-probe: tls\r\n").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-seen-mtls"), Some("false"));
    let answered = match handshake(optional.https, "shop.example", impostor.clone()).await {
        Ok(stream) => get_over(stream, path, "").await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !answered,
        "optional client auth still refuses an untrusted certificate"
    );
    required.stop().await;
    optional.stop().await;
}

/// `min_version: 1.3` refuses a TLS 1.2-only client; the default (1.2) serves it. Either way
/// the server's cipher order decides (AES-128-GCM first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_refuses_older_clients_and_the_server_orders_the_ciphers() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let files = certificates(&[pki.server("shop", &["shop.example"], false)]);
    let default = TlsProxy::start(dir.path(), &origin, &format!("{{ certificates: {files} }}"));
    let modern = TlsProxy::start(
        dir.path(),
        &origin,
        &format!("{{ certificates: {files}, min_version: 1.3 }}"),
    );
    let tls12 = client_config(&pki.ca_file, None, &[&rustls::version::TLS12]);
    let stream = handshake(default.https, "shop.example", tls12.clone())
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // The server's cipher order wins: AES-128-GCM, though rustls clients offer AES-256 first.
    assert_eq!(
        suite(&stream),
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
    );
    let stream = handshake(
        default.https,
        "shop.example",
        client_config(&pki.ca_file, None, all_versions()),
    )
    .await
    .unwrap();
    assert_eq!(
        suite(&stream),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert!(handshake(modern.https, "shop.example", tls12)
        .await
        .is_err());
    default.stop().await;
    modern.stop().await;
}

/// A reconnecting client resumes (TLS 1.3 ticket, and TLS 1.2 session id from the cache), and
/// the handshakes are counted by kind; two instances sharing a ticket key file resume each
/// other's sessions, instances with their own random keys do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_is_counted_and_shared_ticket_keys_resume_across_instances() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let files = certificates(&[pki.server("shop", &["shop.example"], false)]);
    let key_file = dir.path().join("ticket.key");
    std::fs::write(&key_file, [42u8; 48]).unwrap();
    let shared = format!(
        "{{ certificates: {files}, resumption: {{ ticket_key_file: {} }} }}",
        key_file.display()
    );
    let own = format!("{{ certificates: {files} }}");
    let (a, b) = (
        TlsProxy::start(dir.path(), &origin, &shared),
        TlsProxy::start(dir.path(), &origin, &shared),
    );
    let (c, d) = (
        TlsProxy::start(dir.path(), &origin, &own),
        TlsProxy::start(dir.path(), &origin, &own),
    );
    let path = "/api/v1/products?category=polo";
    // One request per connection: a TLS 1.3 ticket arrives after the handshake.
    let visit = |addr: SocketAddr, config: Arc<ClientConfig>| async move {
        let stream = handshake(addr, "shop.example", config).await.unwrap();
        let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        assert_eq!(get_over(stream, path, "").await.unwrap().status, 200);
        resumed
    };

    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let client = client_config(&pki.ca_file, None, versions);
        assert!(!visit(c.https, client.clone()).await, "first visit: full");
        assert!(
            visit(c.https, client.clone()).await,
            "{versions:?}: resumed on return"
        );
    }
    assert_eq!(
        c.eventually("edge_downstream_tls_handshakes_total{kind=\"full\"}", 2.0)
            .await,
        2.0
    );
    assert_eq!(
        c.eventually(
            "edge_downstream_tls_handshakes_total{kind=\"resumed\"}",
            2.0
        )
        .await,
        2.0
    );

    let client = client_config(&pki.ca_file, None, &[&rustls::version::TLS13]);
    assert!(!visit(a.https, client.clone()).await);
    assert!(
        visit(b.https, client.clone()).await,
        "a ticket of instance a resumes on b"
    );
    let client = client_config(&pki.ca_file, None, &[&rustls::version::TLS13]);
    assert!(!visit(c.https, client.clone()).await);
    assert!(
        !visit(d.https, client.clone()).await,
        "random keys are per instance"
    );
    for proxy in [a, b, c, d] {
        proxy.stop().await;
    }
}

/// A reload swaps the certificate: connections already open keep being served, new ones get
/// the new certificate; a reload bringing an expired certificate is refused and the current
/// one stays. Sessions resume across the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_without_dropping_connections_and_refuses_a_bad_one() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let old = pki.server("old", &["shop.example", "old.shop.example"], false);
    let new = pki.server("new", &["shop.example", "new.shop.example"], false);
    let expired = pki.server("expired", &["shop.example"], true);
    let proxy = TlsProxy::start(
        dir.path(),
        &origin,
        &format!("{{ certificates: {} }}", certificates(&[old])),
    );
    let client = client_config(&pki.ca_file, None, all_versions());
    let path = "/api/v1/products?category=polo";

    // An established keep-alive connection from before the reload.
    let mut open = handshake(proxy.https, "shop.example", client.clone())
        .await
        .unwrap();
    assert!(presented_names(&open).contains(&"old.shop.example".to_string()));
    let request = format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    open.write_all(request.as_bytes()).await.unwrap();
    read_one_response(&mut open).await;

    let rewrite = |files: &[(PathBuf, PathBuf)]| {
        let text = std::fs::read_to_string(&proxy.config_file).unwrap();
        let start = text.find("certificates: [").unwrap();
        let end = start + text[start..].find(']').unwrap() + 1;
        let text = format!(
            "{}certificates: {}{}",
            &text[..start],
            certificates(files),
            &text[end..]
        );
        std::fs::write(&proxy.config_file, text).unwrap();
    };
    let reloader = proxy.proxy.as_ref().unwrap().reloader.clone();
    rewrite(&[new]);
    tokio::task::spawn_blocking({
        let reloader = reloader.clone();
        move || reloader.reload().unwrap()
    })
    .await
    .unwrap();
    // A new client sees the new certificate; a returning one resumes its session from before
    // the reload (a resumed handshake presents no certificate).
    let newcomer = client_config(&pki.ca_file, None, all_versions());
    let fresh = handshake(proxy.https, "shop.example", newcomer)
        .await
        .unwrap();
    assert!(presented_names(&fresh).contains(&"new.shop.example".to_string()));
    drop(fresh);
    let returning = handshake(proxy.https, "shop.example", client.clone())
        .await
        .unwrap();
    assert_eq!(
        returning.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the session of before the reload resumes"
    );
    drop(returning);

    // The connection from before the reload is still served.
    open.write_all(request.as_bytes()).await.unwrap();
    read_one_response(&mut open).await;

    rewrite(&[expired]);
    let refused = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .unwrap()
        .expect_err("an expired certificate must be refused");
    let problems = refused.problems().join("\n");
    assert!(problems.contains("expired"), "{problems}");
    let still = handshake(
        proxy.https,
        "shop.example",
        client_config(&pki.ca_file, None, all_versions()),
    )
    .await
    .unwrap();
    assert!(presented_names(&still).contains(&"new.shop.example".to_string()));

    // A file that makes the listener plain is a restart-only change: reported, and the
    // running listener keeps speaking TLS with its current certificate.
    let text = std::fs::read_to_string(&proxy.config_file).unwrap();
    let start = text.find("    tls: ").unwrap();
    let end = start + text[start..].find('\n').unwrap() + 1;
    std::fs::write(
        &proxy.config_file,
        format!("{}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    let reloader = proxy.proxy.as_ref().unwrap().reloader.clone();
    let applied = tokio::task::spawn_blocking(move || reloader.reload().unwrap())
        .await
        .unwrap();
    assert!(
        applied
            .restart_required
            .iter()
            .any(|c| c.starts_with("listen/listeners")),
        "{:?}",
        applied.restart_required
    );
    let after = handshake(
        proxy.https,
        "shop.example",
        client_config(&pki.ca_file, None, all_versions()),
    )
    .await
    .expect("the running listener still speaks TLS");
    assert!(presented_names(&after).contains(&"new.shop.example".to_string()));
    proxy.stop().await;
}

/// Reads one HTTP/1.1 response with a content-length from a keep-alive stream; asserts 200.
async fn read_one_response(stream: &mut ClientStream) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a whole response");
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= length {
                return;
            }
        }
    }
}

/// The problems of a config that must be refused, as `path: problem`.
fn refusal(yaml: &str, dir: &Path) -> Vec<String> {
    let Err(edge_proxy::config::ConfigError::Invalid(problems)) =
        edge_proxy::config::from_yaml(yaml, dir)
    else {
        panic!("the config must be refused");
    };
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.problem))
        .collect()
}

fn has_problem(text: &[String], path: &str, words: &str) {
    assert!(
        text.iter()
            .any(|t| t.starts_with(path) && t.contains(words)),
        "no `{path}` problem with `{words}` in {text:#?}"
    );
}

/// Bad TLS settings are config errors naming their key: an expired certificate, a key of
/// another certificate, an unknown ALPN protocol, TLS 1.1, a short ticket key file.
#[test]
fn bad_tls_settings_are_config_errors_with_their_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let (good_chain, good_key) = pki.server("good", &["shop.example"], false);
    let (expired_chain, expired_key) = pki.server("expired", &["shop.example"], true);
    let (other_chain, _) = pki.server("other", &["other.example"], false);
    std::fs::write(dir.path().join("short.key"), [1u8; 8]).unwrap();
    let yaml = format!(
        "listeners:\n\
         \x20 - address: 127.0.0.1:18443\n\
         \x20   tls: {{ certificates: [{{ chain: {ec}, key: {ek} }}], alpn: [h2, spdy/3] }}\n\
         \x20 - address: 127.0.0.1:18444\n\
         \x20   tls: {{ certificates: [{{ chain: {oc}, key: {gk} }}], resumption: {{ ticket_key_file: short.key }} }}\n\
         \x20 - address: 127.0.0.1:18445\n\
         \x20   tls: {{ certificates: [{{ chain: {gc}, key: {gk} }}], min_version: 1.1 }}\n\
         upstreams: {{ u: {{ addresses: [127.0.0.1:1] }} }}\n\
         routes: [{{ name: r, path_prefix: /, upstream: u }}]\n",
        ec = expired_chain.display(),
        ek = expired_key.display(),
        oc = other_chain.display(),
        gc = good_chain.display(),
        gk = good_key.display(),
    );
    let text = refusal(&yaml, dir.path());
    let has = |path: &str, words: &str| has_problem(&text, path, words);
    has("listeners[2].tls.min_version", "1.1");
    // The parse error stops at the first bad value; fix it and the rest are reported together.
    let yaml = yaml.replace("min_version: 1.1", "min_version: 1.3");
    let text = refusal(&yaml, dir.path());
    let has = |path: &str, words: &str| has_problem(&text, path, words);
    has("listeners[0].tls.certificates[0]", "expired");
    has("listeners[0].tls.alpn[1]", "spdy/3");
    has("listeners[1].tls.certificates[0]", "does not belong");
    has(
        "listeners[1].tls.resumption.ticket_key_file",
        "fewer than 32",
    );
    assert_eq!(text.len(), 4, "{text:#?}");
}

/// HTTP/2 frames by hand: what an attacker sends, which no client library would.
mod h2_frames {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK: a literal field without indexing whose name is static-table entry `index`.
    fn literal(index: u8, value: &str) -> Vec<u8> {
        let mut out = vec![index, value.len() as u8];
        out.extend_from_slice(value.as_bytes());
        out
    }

    /// `GET https://shop.example/api/v1/products?category=polo` as a header block.
    pub fn get_block() -> Vec<u8> {
        let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
        block.extend(literal(1, "shop.example")); // :authority
        block.extend(literal(4, "/api/v1/products?category=polo")); // :path
        block
    }

    /// Filler fields for a header block that never ends (`x-filler-N: aaaa...`).
    pub fn filler(n: usize) -> Vec<u8> {
        let name = format!("x-filler-{n}");
        let mut out = vec![0x00, name.len() as u8];
        out.extend_from_slice(name.as_bytes());
        out.push(100);
        out.extend_from_slice(&[b'a'; 100]);
        out
    }

    pub const DATA: u8 = 0x0;
    pub const ACK: u8 = 0x1;

    /// One whole frame off the front of `buf`: kind, flags, stream id, payload.
    pub fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, u8, u32, Vec<u8>)> {
        if buf.len() < 9 {
            return None;
        }
        let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
        if buf.len() < 9 + len {
            return None;
        }
        let (kind, flags) = (buf[3], buf[4]);
        let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        let payload = buf[9..9 + len].to_vec();
        buf.drain(..9 + len);
        Some((kind, flags, id, payload))
    }

    /// Reads frames until `stream` ends, answering the server's SETTINGS; gives the payload
    /// length and flags of each DATA frame of `stream`.
    pub async fn data_frames<S>(io: &mut S, stream: u32) -> Vec<(usize, u8)>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut frames = Vec::new();
        loop {
            while let Some((kind, flags, id, payload)) = take_frame(&mut buf) {
                if kind == SETTINGS && flags & ACK == 0 {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                }
                assert_ne!(kind, GOAWAY, "the server closed the connection");
                if id != stream {
                    continue;
                }
                if kind == DATA {
                    frames.push((payload.len(), flags));
                }
                if (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 {
                    return frames;
                }
            }
            let n = io.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "the connection ended before stream {stream} did");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
    pub async fn goaway<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Option<u32> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while let Some((kind, _, _, payload)) = take_frame(&mut buf) {
                if kind == GOAWAY && payload.len() >= 8 {
                    return Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A TLS proxy for `shop.example` in front of `origin`, and a rustls client offering only h2.
fn h2_shop(dir: &Path, origin: &Origin) -> (Pki, TlsProxy, Arc<ClientConfig>) {
    let pki = Pki::new(dir, "shop");
    let files = certificates(&[pki.server("shop", &["shop.example"], false)]);
    let proxy = TlsProxy::start(dir, origin, &format!("{{ certificates: {files} }}"));
    let mut h2_client = (*client_config(&pki.ca_file, None, all_versions())).clone();
    h2_client.alpn_protocols = vec![b"h2".to_vec()];
    (pki, proxy, Arc::new(h2_client))
}

/// A cache hit over HTTP/2 ends on the DATA frame that carries its body, not on an empty DATA
/// frame of its own: one write to the client per hit instead of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_cache_hit_ends_on_the_data_frame_of_its_body() {
    use h2_frames::*;
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let (_pki, proxy, h2_client) = h2_shop(dir.path(), &origin);
    let mut stream = handshake(proxy.https, "shop.example", h2_client)
        .await
        .unwrap();
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&opening).await.unwrap();
    let mut sizes = Vec::new();
    for id in [1, 3, 5] {
        stream
            .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &get_block()))
            .await
            .unwrap();
        let frames = tokio::time::timeout(Duration::from_secs(10), data_frames(&mut stream, id))
            .await
            .expect("the response must end");
        let body: usize = frames.iter().map(|(len, _)| len).sum();
        assert!(body > 0, "stream {id}: no body");
        sizes.push(body);
        if id != 1 {
            let (last_len, last_flags) = *frames.last().unwrap();
            assert!(
                last_flags & END_STREAM != 0 && last_len > 0,
                "hit on stream {id}: the body's frames {frames:?} (length, flags) end with an empty frame"
            );
        }
    }
    assert!(sizes.iter().all(|s| *s == sizes[0]), "bodies {sizes:?}");
    assert_eq!(
        proxy
            .eventually(
                r#"edge_cache_lookups_total{result="HIT",route="catalog"}"#,
                2.0
            )
            .await,
        2.0
    );
    proxy.stop().await;
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The HTTP/2 attacks of 2023-2024 against a TLS listener: rapid reset (HEADERS then
/// RST_STREAM, as fast as the client can) and an endless CONTINUATION sequence. Each is cut off
/// with GOAWAY or a closed connection within seconds, having cost bounded work and memory,
/// and the proxy goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_and_continuation_floods_are_cut_off() {
    use h2_frames::*;
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let (pki, proxy, h2_client) = h2_shop(dir.path(), &origin);
    let rss_before = resident_kib();

    // Rapid reset: 100,000 streams opened and cancelled, in batches of 500.
    let stream = handshake(proxy.https, "shop.example", h2_client.clone())
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut reader, mut writer) = tokio::io::split(stream);
    let watcher = tokio::spawn(async move { goaway(&mut reader).await });
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    writer.write_all(&opening).await.unwrap();
    let block = get_block();
    let mut sent = 0u32;
    let started = std::time::Instant::now();
    'attack: for batch in 0..200u32 {
        let mut bytes = Vec::new();
        for i in 0..500u32 {
            let id = (batch * 500 + i) * 2 + 1;
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if writer.write_all(&bytes).await.is_err() {
            break 'attack;
        }
        sent += 500;
        if watcher.is_finished() {
            break;
        }
    }
    let verdict = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the rapid-reset connection must be cut off")
        .unwrap();
    assert!(
        verdict.is_none() || verdict == Some(ENHANCE_YOUR_CALM),
        "GOAWAY with {verdict:?}"
    );
    assert!(
        sent < 100_000,
        "the whole flood was accepted ({sent} streams)"
    );
    let served = proxy
        .metric("edge_requests_total{route=\"catalog\",status=\"200\"}")
        .await;
    eprintln!(
        "rapid reset: cut off after {sent} streams sent in {:?} (GOAWAY {verdict:?}); {served} requests served",
        started.elapsed()
    );
    assert!(served < 2_000.0, "{served} reset streams were served");

    // CONTINUATION flood: one header block that never ends.
    let stream = handshake(proxy.https, "shop.example", h2_client.clone())
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let watcher = tokio::spawn(async move { goaway(&mut reader).await });
    writer.write_all(&opening).await.unwrap();
    writer
        .write_all(&frame(HEADERS, END_STREAM, 1, &block))
        .await
        .unwrap();
    let mut payload = Vec::new();
    let mut n = 0;
    while payload.len() < 16_000 {
        payload.extend(filler(n));
        n += 1;
    }
    let mut continuation_bytes = 0usize;
    for _ in 0..4_000 {
        if writer
            .write_all(&frame(CONTINUATION, 0, 1, &payload))
            .await
            .is_err()
        {
            break;
        }
        continuation_bytes += payload.len();
        if watcher.is_finished() {
            break;
        }
    }
    let verdict = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the CONTINUATION flood must be cut off")
        .unwrap();
    eprintln!(
        "continuation flood: cut off after {} KiB of CONTINUATION frames (GOAWAY {verdict:?})",
        continuation_bytes / 1024
    );
    assert!(
        continuation_bytes < 4_000 * payload.len(),
        "64 MB of one header block were read without a complaint"
    );

    let grown = resident_kib().saturating_sub(rss_before);
    assert!(
        grown < 100 * 1024,
        "memory grew by {grown} KiB under the attacks"
    );
    // Still serving.
    let stream = handshake(
        proxy.https,
        "shop.example",
        client_config(&pki.ca_file, None, all_versions()),
    )
    .await
    .unwrap();
    assert_eq!(
        get_over(stream, "/api/v1/products?category=polo", "")
            .await
            .unwrap()
            .status,
        200
    );
    proxy.stop().await;
}

/// A client that opens TCP and never starts TLS, or finishes TLS with ALPN h2 and never sends
/// the HTTP/2 preface, is closed after `downstream.header_read_timeout`; the stalled handshake
/// is counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_silent_h2_connections_are_closed_at_the_head_deadline() {
    let origin = Origin::start(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "shop");
    let files = certificates(&[pki.server("shop", &["shop.example"], false)]);
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = tls_proxy_yaml(
        dir.path(),
        &origin,
        https,
        &format!("{{ certificates: {files} }}"),
    ) + "downstream: { header_read_timeout: 1s }\n";
    let config_file = dir.path().join("edge.yaml");
    std::fs::write(&config_file, yaml).unwrap();
    let proxy = TlsProxy {
        proxy: Some(RunningProxy::start_from_file(&config_file).unwrap()),
        https,
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        config_file,
    };
    let proxy = TlsProxy {
        admin: proxy.proxy.as_ref().unwrap().admin,
        ..proxy
    };
    // Reads (the server's own SETTINGS, on h2) until the proxy closes the connection.
    let closed_within = |mut stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let started = std::time::Instant::now();
        let mut sink = Vec::new();
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
        assert!(outcome.is_ok(), "the connection must be closed");
        started.elapsed()
    };

    let silent_tcp = TcpStream::connect(https).await.unwrap();
    let waited = closed_within(Box::new(silent_tcp)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_eq!(
        proxy
            .eventually(
                "edge_downstream_tls_handshake_failures_total{reason=\"timeout\"}",
                1.0
            )
            .await,
        1.0
    );

    let mut h2_client = (*client_config(&pki.ca_file, None, all_versions())).clone();
    h2_client.alpn_protocols = vec![b"h2".to_vec()];
    let silent_h2 = handshake(https, "shop.example", Arc::new(h2_client))
        .await
        .unwrap();
    assert_eq!(silent_h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let waited = closed_within(Box::new(silent_h2)).await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    proxy.stop().await;
}
