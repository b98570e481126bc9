//! The admin listener (loopback only): `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (ready for traffic; 503 once shutdown has begun, so load balancers drain us first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

#[derive(Debug)]
pub struct AdminApp {
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Self {
        Self { metrics, draining }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let length = body.len();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(header::CONTENT_LENGTH, length.into());
    response
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        const JSON: &str = "application/json";
        match session.req_header().uri.path() {
            "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.render()),
            "/healthz" => reply(StatusCode::OK, JSON, br#"{"status":"ok"}"#.to_vec()),
            "/readyz" if self.draining.load(Ordering::Relaxed) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                JSON,
                br#"{"status":"draining"}"#.to_vec(),
            ),
            "/readyz" => reply(StatusCode::OK, JSON, br#"{"status":"ready"}"#.to_vec()),
            _ => reply(
                StatusCode::NOT_FOUND,
                JSON,
                br#"{"error":{"status":404,"code":"not_found","message":"admin endpoints: /metrics /healthz /readyz"}}"#.to_vec(),
            ),
        }
    }
}
