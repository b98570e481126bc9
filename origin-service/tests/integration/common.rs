//! A test origin: temp state folder, YAML config (base + per-test overrides, deep-merged),
//! a reqwest client trusting the generated CA, and a /metrics reader.

use std::time::Duration;

use origin_service::config::OriginConfig;
use origin_service::RunningOrigin;
use serde_yaml_ng::Value;

pub struct TestOrigin {
    pub origin: RunningOrigin,
    pub client: reqwest::Client,
    pub base: String,
    ca_pem: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Mapping(base), Value::Mapping(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

impl TestOrigin {
    /// A catalog of `products` products; `overrides` is YAML merged over the test defaults.
    pub async fn start(products: u32, overrides: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml: Value = serde_yaml_ng::from_str(&format!(
            "listen: 127.0.0.1:0\n\
             state_dir: state\n\
             http: {{ shutdown_grace: 2s }}\n\
             database: {{ seed_products: {products}, seed: 7, pool: {{ max_connections: 4, min_idle: 1 }} }}\n"
        ))
        .unwrap();
        if !overrides.trim().is_empty() {
            merge(&mut yaml, serde_yaml_ng::from_str(overrides).unwrap());
        }
        let path = dir.path().join("origin.yaml");
        std::fs::write(&path, serde_yaml_ng::to_string(&yaml).unwrap()).unwrap();
        let config = OriginConfig::load(&path).unwrap();
        let origin = origin_service::start(config).await.unwrap();
        let ca_pem = std::fs::read(origin.ca_file().unwrap()).unwrap();
        let base = format!("https://127.0.0.1:{}", origin.local_addr().port());
        let mut this = Self {
            origin,
            client: reqwest::Client::new(),
            base,
            ca_pem,
            _dir: dir,
        };
        this.client = this.client_builder().build().unwrap();
        this
    }

    /// A client that trusts only the test CA and never uses an environment proxy.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).unwrap())
            .no_proxy()
            .timeout(Duration::from_secs(20))
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(self.url(path_and_query))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let response = self.get(path_and_query).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The value of one series on /metrics, e.g. `origin_tls_handshakes_total{kind="resumed"}`;
    /// 0 when the series has not been created yet.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }
}
