//! The three production plugins (auth -> rate-limit -> metrics-export, built from `plugins/`)
//! in one proxy, as the default config runs them, plus the tokens an identity provider would
//! mint for it (HS256 and ES256 JWTs).
//!
//! Routes: `/api/` the cached catalog (all three plugins), `/echo/` the echo upstream behind
//! auth and rate-limit (shows what reaches the origin), `/anon/` the echo behind rate-limit
//! only (buckets keyed by API key or address).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{catalog_upstream, plugin_wasm, proxy_yaml, Origin, Proxy};

pub const DEV_KEY: &str = "dev-test-key-0123456789";
pub const PARTNER_KEY: &str = "acme-partner-secret";
pub const ISSUER: &str = "https://auth.test";
pub const HS_SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-or-more";

pub fn ec_key() -> SigningKey {
    SigningKey::from_slice(&[42u8; 32]).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims the proxy accepts: client `sub`, our issuer and audience, valid for a minute.
pub fn good_claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": "catalog", "exp": now() + 60, "iat": now()})
}

pub fn hs256_with(secret: &[u8], header: Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

pub fn hs256(claims: &Value) -> String {
    hs256_with(
        HS_SECRET,
        json!({"alg": "HS256", "typ": "JWT", "kid": "hs-1"}),
        claims,
    )
}

pub fn es256(claims: &Value) -> String {
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "es-1"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: Signature = ec_key().sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

/// The EC public key as the uncompressed SEC1 point (what a confused verifier would use as an
/// HMAC secret).
pub fn ec_public_point() -> Vec<u8> {
    ec_key()
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn jwks() -> String {
    let point = ec_key().verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": b64(HS_SECRET)},
        {"kty": "EC", "kid": "es-1", "crv": "P-256", "alg": "ES256",
         "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
    ]})
    .to_string()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the shop's plugins are deployed: the three separate plugins, or the merged `shop-edge`
/// with the same configurations as its sections. Every shop test runs against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Separate,
    Merged,
}

impl Shape {
    /// The `plugin` label of the catalog route's business metrics.
    pub fn metrics_plugin(self) -> &'static str {
        match self {
            Shape::Separate => "metrics-export",
            Shape::Merged => "shop-edge",
        }
    }
}

/// Two tests per `async fn name(shape: Shape)`: `name::separate_plugins`, `name::merged_plugin`.
macro_rules! in_both_shapes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::shop::Shape;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn separate_plugins() {
                    super::$name(Shape::Separate).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn merged_plugin() {
                    super::$name(Shape::Merged).await
                }
            }
        )*
    };
}
pub(crate) use in_both_shapes;

/// A proxy running the shop's plugins (`shape`) in front of `origin` (catalog, cached) and
/// `echo`: the catalog route runs auth, rate limiting and metrics; `/echo/` auth and rate
/// limiting; `/anon/` rate limiting only.
pub fn start(origin: &Origin, echo: SocketAddr, shape: Shape) -> Proxy {
    let upstreams = catalog_upstream(
        origin.origin.local_addr(),
        &origin.ca,
        &format!("  echo: {{ addresses: [{echo}] }}\n"),
    );
    let auth_config = json!({
        "realm": "catalog",
        "protected_prefixes": ["/api/", "/echo/"],
        "public_paths": ["/echo/public/*", "/api/v1/categories"],
        "api_keys": [
            {"client_id": "dev-local", "key": DEV_KEY},
            {"client_id": "partner-acme", "sha256": sha256_hex(PARTNER_KEY)},
        ],
        "jwt": {"issuer": ISSUER, "audiences": ["catalog"], "leeway_seconds": 30,
                "jwks": serde_json::from_str::<Value>(&jwks()).unwrap()},
    });
    let limit_config = json!({"rules": [
        {"name": "polo", "path_prefix": "/echo/list", "query": {"category": "polo"}, "rate_per_second": 0.1, "burst": 2},
        {"name": "tight", "path_prefix": "/echo/tight", "rate_per_second": 2, "burst": 3},
        {"name": "shared", "path_prefix": "/echo/shared", "rate_per_second": 0.1, "burst": 100},
        {"name": "anon", "path_prefix": "/anon/", "rate_per_second": 0.1, "burst": 2},
        {"name": "catalog", "path_prefix": "/api/", "rate_per_second": 1000, "burst": 1000},
    ]});
    let metrics_config = json!({
        "categories": ["polo", "tee"],
        "brands": ["acme"],
        "client_classes": {"dev-": "internal", "partner-": "partner"},
    });
    let cache = "cache: { key_query_params: [category, cursor, limit], tag_query_param: category }";
    let (plugins, chains) = match shape {
        Shape::Separate => {
            let (auth, limit, metrics) = (
                plugin_wasm("auth"),
                plugin_wasm("rate_limit"),
                plugin_wasm("metrics_export"),
            );
            (
                format!(
                    "  - {{ name: auth, module: {auth}, config: {auth_config} }}\n\
                     \x20 - {{ name: rate-limit, module: {limit}, vms: 2, config: {limit_config} }}\n\
                     \x20 - {{ name: metrics-export, module: {metrics}, config: {metrics_config} }}\n",
                    auth = auth.display(),
                    limit = limit.display(),
                    metrics = metrics.display(),
                ),
                ["auth, rate-limit, metrics-export", "auth, rate-limit", "rate-limit"],
            )
        }
        Shape::Merged => {
            let module = plugin_wasm("shop_edge");
            let merged = |name: &str, config: Value| {
                format!(
                    "  - {{ name: {name}, module: {}, vms: 2, config: {config} }}\n",
                    module.display()
                )
            };
            (
                merged(
                    "shop-edge",
                    json!({"auth": auth_config, "rate_limit": limit_config, "metrics": metrics_config}),
                ) + &merged(
                    "shop-edge-echo",
                    json!({"auth": auth_config, "rate_limit": limit_config}),
                ) + &merged("shop-edge-anon", json!({"rate_limit": limit_config})),
                ["shop-edge", "shop-edge-echo", "shop-edge-anon"],
            )
        }
    };
    let routes = format!(
        "  - {{ name: catalog, path_prefix: /api/, upstream: catalog, plugins: [{}], {cache} }}\n\
         \x20 - {{ name: echo, path_prefix: /echo/, upstream: echo, plugins: [{}] }}\n\
         \x20 - {{ name: anon, path_prefix: /anon/, upstream: echo, plugins: [{}] }}",
        chains[0], chains[1], chains[2]
    );
    Proxy::start(|dir| {
        proxy_yaml(dir, &upstreams, &routes)
            + &format!(
                "plugin_host:\n  shared_data:\n    ttl_by_prefix: {{ \"ratelimit/\": 2m }}\n\
                 plugins:\n{plugins}"
            )
    })
}
