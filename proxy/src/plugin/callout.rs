//! Running the HTTP callouts plugins dispatch (`proxy_http_call`): on the named upstream's
//! settings (TLS, timeouts, pooled connections through a Pingora connector sharing the server's
//! CA), concurrently, each bounded by the plugin's timeout. A failed or timed-out callout is
//! delivered as a response with no headers and no body, which the SDK reads as a failure.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::server::configuration::ServerConf;

use super::state::{CalloutRequest, CalloutResponse};
use crate::upstream::Upstream;

/// Largest callout response body kept.
const MAX_BODY: usize = 1024 * 1024;

/// What came back for one callout.
#[derive(Debug, Clone, Default)]
pub struct CalloutAnswer {
    /// `None` when the callout failed (connect error, timeout, unknown upstream).
    pub response: Option<CalloutResponse>,
}

impl CalloutAnswer {
    /// (header count, body size) as `proxy_on_http_call_response` reports them.
    pub fn sizes(&self) -> (u32, u32) {
        self.response.as_ref().map_or((0, 0), |r| {
            (
                u32::try_from(r.headers.len()).unwrap_or(u32::MAX),
                u32::try_from(r.body.len()).unwrap_or(u32::MAX),
            )
        })
    }
}

/// The callout runner of a proxy.
pub struct Callouts {
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Shared by the callouts of every configuration generation (one pool, one TLS session store).
    connector: Arc<Connector>,
}

impl std::fmt::Debug for Callouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callouts")
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Callouts {
    pub fn new(upstreams: HashMap<String, Arc<Upstream>>, server: &ServerConf) -> Self {
        Self {
            upstreams,
            connector: Arc::new(Connector::new(Some(ConnectorOptions::from_server_conf(
                server,
            )))),
        }
    }

    /// The same connector (pooled connections, TLS sessions) for a reloaded set of upstreams.
    pub fn with_upstreams(&self, upstreams: HashMap<String, Arc<Upstream>>) -> Self {
        Self {
            upstreams,
            connector: self.connector.clone(),
        }
    }

    /// Runs every callout concurrently; answers in dispatch order with their tokens.
    pub async fn run_all(&self, requests: Vec<CalloutRequest>) -> Vec<(u32, CalloutAnswer)> {
        let runs = requests.into_iter().map(|request| async move {
            let token = request.token;
            let outcome = tokio::time::timeout(request.timeout, self.exchange(&request)).await;
            let response = match outcome {
                Ok(Ok(response)) => Some(response),
                Ok(Err(error)) => {
                    tracing::warn!(upstream = %request.upstream, %error, "plugin callout failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(upstream = %request.upstream, timeout = ?request.timeout, "plugin callout timed out");
                    None
                }
            };
            (token, CalloutAnswer { response })
        });
        futures::future::join_all(runs).await
    }

    async fn exchange(&self, request: &CalloutRequest) -> pingora::Result<CalloutResponse> {
        use pingora::{Error, ErrorType};
        let upstream = self
            .upstreams
            .get(&request.upstream)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown upstream"))?;
        let peer = upstream
            .peer()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream has no addresses"))?;
        let pseudo = |name: &[u8]| {
            request
                .headers
                .iter()
                .find(|(k, _)| k.as_slice() == name)
                .map(|(_, v)| text(v))
                .unwrap_or_default()
        };
        let mut header = RequestHeader::build(
            pseudo(b":method").as_str(),
            pseudo(b":path").as_bytes(),
            None,
        )?;
        header.insert_header(http::header::HOST, pseudo(b":authority"))?;
        for (k, v) in request.headers.iter().filter(|(k, _)| !k.starts_with(b":")) {
            header.append_header(text(k), v.as_slice())?;
        }
        if !request.body.is_empty() {
            header.insert_header(http::header::CONTENT_LENGTH, request.body.len().to_string())?;
        }
        let (mut session, _reused) = self.connector.get_http_session(&peer).await?;
        session.write_request_header(Box::new(header)).await?;
        if !request.body.is_empty() {
            session
                .write_request_body(Bytes::from(request.body.clone()), true)
                .await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let head = session
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        let mut headers = vec![(
            ":status".to_string(),
            head.status.as_str().as_bytes().to_vec(),
        )];
        headers.extend(
            head.headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
        );
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() + chunk.len() > MAX_BODY {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "callout response body over 1 MiB",
                );
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, &peer, Some(upstream.settings.idle_timeout))
            .await;
        Ok(CalloutResponse { headers, body })
    }
}
