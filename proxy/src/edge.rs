//! `EdgeProxy`: Pingora's `ProxyHttp`, one short method per phase in Pingora's order, each
//! delegating to the module that owns the concern (framing, normalize, routing, the plugin
//! chain, cache, hygiene, answers, errors, metrics).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST, VARY};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::{self, AccessLog};
use crate::answers::{
    self, local_header, respond_json, send_failure, send_local, send_plugin_failure,
};
use crate::cache::storage::MokaStorage;
use crate::cache::{self, cacheability, key};
use crate::plugin::chain::{BodyStep, Chain, Outcome};

use crate::connections;
use crate::ctx::RequestCtx;
use crate::errors;
use crate::framing;
use crate::generation::Current;
use crate::hygiene;
use crate::metrics::Metrics;
use crate::normalize;
use crate::tls::client::ClientTlsTable;

pub struct EdgeProxy {
    /// The configuration generation new requests get (a reload swaps it).
    current: Current,
    /// Set once shutdown or an upgrade began: every response closes its connection.
    draining: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    cache: &'static MokaStorage,
    cache_lock: &'static CacheKeyLockImpl,
    access_log: AccessLog,
    /// The facts of live client TLS connections, for their requests.
    client_tls: Arc<ClientTlsTable>,
}

impl std::fmt::Debug for EdgeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeProxy")
            .field("generation", &self.current.load().number)
            .finish_non_exhaustive()
    }
}

impl EdgeProxy {
    pub fn new(
        current: Current,
        draining: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        cache: &'static MokaStorage,
        cache_lock: &'static CacheKeyLockImpl,
        access_log: AccessLog,
        client_tls: Arc<ClientTlsTable>,
    ) -> Self {
        Self {
            client_tls,
            current,
            draining,
            metrics,
            cache,
            cache_lock,
            access_log,
        }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    /// The request keeps the generation current now until it ends.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.current.load_full())
    }

    /// Request id and route, before anything else looks at the request.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.metrics.in_flight.inc();
        connections::apply_limits(session, &ctx.generation.config.downstream);
        if self.draining.load(Ordering::Relaxed) {
            // Draining (shutdown or upgrade): this response says `Connection: close` and the
            // connection ends after it, between requests, so the client's next request goes
            // to a new connection (the new process) instead of racing the close.
            session.set_keepalive(None);
        }
        hygiene::host_from_authority(session.req_header_mut())?;
        if let Err(refusal) = framing::check(session.req_header_mut()) {
            ctx.refusal = Some(refusal.clone());
            return Error::e_explain(ErrorType::HTTPStatus(refusal.status), refusal.message);
        }
        // One spelling of the target for routing, plugins, the cache key and the origin.
        if normalize::apply(session.req_header_mut()).is_err() {
            return Error::e_explain(ErrorType::HTTPStatus(400), "bad request target");
        }
        let header = session.req_header();
        ctx.request_id =
            hygiene::request_id(header.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.route = ctx
            .generation
            .config
            .router
            .route(header.uri.path())
            .cloned();
        ctx.tls = self.client_tls.of_request(session.digest());
        if let Some(route) = ctx.route.as_ref().filter(|r| !r.plugins.is_empty()) {
            let client = session.client_addr().and_then(|a| a.as_inet()).copied();
            ctx.chain = Some(Chain::new(
                &ctx.generation.plugins.host.plugins,
                &route.plugins,
                ctx.request_id.clone(),
                client,
                ctx.tls.clone(),
            ));
        }
        Ok(())
    }

    /// No route: answer 404 here; nothing goes upstream.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if ctx.route.is_some() {
            let Some(chain) = ctx.chain.as_mut() else {
                answers::continue_if_expected(session).await?;
                return Ok(false);
            };
            let plugins = &ctx.generation.plugins;
            if let Outcome::Respond(local) = chain
                .request_headers(
                    &plugins.host.plugins,
                    session.req_header_mut(),
                    &plugins.callouts,
                )
                .await
            {
                send_local(session, ctx, local).await?;
                return Ok(true);
            }
            answers::continue_if_expected(session).await?;
            return Ok(false);
        }
        let path = session.req_header().uri.path().to_string();
        respond_json(
            session,
            404,
            "no_route",
            &format!("no route matches {path}"),
        )
        .await?;
        Ok(true)
    }

    /// Cacheable route, GET/HEAD, no Authorization: look the response up in the cache (after the
    /// request filters, so plugins and auth still see every hit).
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(policy) = ctx.cache_policy() else {
            return Ok(());
        };
        let request = session.req_header();
        let cacheable_method = matches!(request.method, http::Method::GET | http::Method::HEAD);
        if !cacheable_method || request.headers.contains_key(AUTHORIZATION) {
            return Ok(());
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(policy.lock_timeout);
        session.cache.enable(
            self.cache,
            None,
            None,
            Some(self.cache_lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let (Some(route), Some(policy)) = (ctx.route.as_ref(), ctx.cache_policy()) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a cache policy");
        };
        let request = session.req_header();
        let host = request
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(request.uri.host())
            .unwrap_or_default();
        Ok(key::cache_key(
            &route.name,
            host,
            request.uri.path(),
            request.uri.query(),
            policy,
        ))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        response: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(match ctx.cache_policy() {
            Some(policy) => cacheability::response_cacheability(response, policy),
            None => RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled),
        })
    }

    /// One variant per value of each request header the response's `Vary` names.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        request: &RequestHeader,
    ) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        let mut any = false;
        let names = meta
            .headers()
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty());
        for name in names {
            // HeaderMap lookups are case-insensitive; the variance uses the name as sent.
            let value = request.headers.get(name).map_or(&b""[..], |v| v.as_bytes());
            variance.add_value(name, value);
            any = true;
        }
        if any {
            variance.finalize()
        } else {
            None
        }
    }

    /// Stale-while-revalidate always (within the entry's window, which Pingora checks), and
    /// stale-if-error when the upstream failed (down, timeout, 5xx).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route at upstream_peer"))?;
        let peer = route
            .upstream
            .peer()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream has no addresses"))?;
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.reused = Some(reused);
        if let Some(route) = &ctx.route {
            self.metrics
                .upstream_connections
                .with_label_values(&[
                    route.upstream.name.as_str(),
                    if reused { "true" } else { "false" },
                ])
                .inc();
        }
        Ok(())
    }

    /// Host, X-Forwarded-*, traceparent, request id; hop-by-hop headers removed.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_sent = Some(std::time::Instant::now());
        // Plugins may rewrite the request body: then it is framed by what is actually sent.
        let rewritable_body =
            ctx.chain.is_some() && framing::request_has_body(session.req_header());
        let forwarded = hygiene::Forwarded {
            client: hygiene::client_ip(session).unwrap_or_default(),
            request_id: &ctx.request_id,
            host: ctx
                .route
                .as_ref()
                .and_then(|r| r.upstream.host_header.as_deref()),
            https: ctx.tls.is_some(),
            rewritable_body,
        };
        hygiene::prepare_upstream_request(upstream_request, &forwarded)
    }

    /// Hop-by-hop headers from the upstream are dropped before the response is cached or sent.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.response_deadline()?;
        for name in hygiene::hop_by_hop_present(&response.headers) {
            response.remove_header(&name);
        }
        if ctx.route.as_ref().is_some_and(|r| r.upstream.shield) {
            // Kept (and cached) under its own name; `response_filter` shows it after ours.
            if let Some(shield) = response.remove_header(cache::tiers::X_CACHE) {
                response.insert_header(cache::tiers::X_CACHE_SHIELD, shield)?;
            }
        }
        Ok(())
    }

    /// The request id and where the response came from (`X-Cache`), hits and misses alike.
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.cache_result = cache::x_cache(session.cache.phase());
        match response.remove_header(cache::tiers::X_CACHE_SHIELD) {
            Some(shield) => response.insert_header(
                cache::tiers::X_CACHE,
                cache::tiers::both(ctx.cache_result, shield.as_bytes()),
            )?,
            None => response.insert_header(cache::tiers::X_CACHE, ctx.cache_result)?,
        }
        let Some(chain) = ctx.chain.as_mut() else {
            return Ok(());
        };
        let callouts = &ctx.generation.plugins.callouts;
        let had_length = response.headers.contains_key(http::header::CONTENT_LENGTH);
        if let Outcome::Respond(local) = chain
            .response_headers(
                &ctx.generation.plugins.host.plugins,
                session.req_header_mut(),
                response,
                callouts,
            )
            .await
        {
            *response = local_header(&local, &ctx.request_id)?;
            ctx.replacement_body = Some(Bytes::from(local.body));
            return Ok(());
        }
        // A plugin that may change the body's length removes Content-Length (Envoy's idiom) or
        // holds the headers: the body then goes out chunked, framed by what is actually sent.
        let removed = had_length && !response.headers.contains_key(http::header::CONTENT_LENGTH);
        let has_body = framing::response_may_have_body(session.req_header(), response);
        if has_body && (removed || chain.response_headers_held) {
            response.remove_header(&http::header::CONTENT_LENGTH);
            response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    /// The upstream's response deadline, checked as each chunk arrives (a read waits at most
    /// `read_timeout`, so a trickling upstream is cut within that of the deadline).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        ctx.response_deadline()?;
        Ok(None)
    }

    /// Request body chunks through the plugins' `on_request_body` (buffered while one pauses).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chain) = ctx.chain.as_mut() else {
            return Ok(());
        };
        // Pingora reads `None` as the end of the upstream body: hold back with an empty chunk.
        let plugins = &ctx.generation.plugins;
        let step = chain
            .request_body(
                &plugins.host.plugins,
                session.req_header_mut(),
                body.take(),
                end_of_stream,
                &plugins.callouts,
            )
            .await;
        match step {
            // At the end, nothing is `None`: an empty chunk there would be written after the
            // body's end (Pingora warns "Upstream body is already finished").
            Ok(BodyStep::Forward(bytes)) if bytes.is_empty() && end_of_stream => *body = None,
            Ok(BodyStep::Forward(bytes)) => *body = Some(bytes),
            Ok(BodyStep::Hold) => *body = Some(Bytes::new()),
            Err(answer) => return answers::end_in_body_phase(ctx, answer),
        }
        Ok(())
    }

    /// A plugin's local response from a response phase replaces the upstream's body; otherwise
    /// the chunks go through the plugins' `on_response_body` (buffered while one pauses).
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(replacement) = &ctx.replacement_body {
            *body = end_of_stream.then(|| replacement.clone());
            return Ok(None);
        }
        if let Some(chain) = ctx.chain.as_mut() {
            // Here an empty chunk would end a chunked body: hold back with `None`.
            match chain.response_body(
                &ctx.generation.plugins.host.plugins,
                session.req_header_mut(),
                body.take(),
                end_of_stream,
            ) {
                Ok(BodyStep::Forward(bytes)) => *body = (!bytes.is_empty()).then_some(bytes),
                Ok(BodyStep::Hold) => *body = None,
                Err(answer) => return answers::end_in_body_phase(ctx, answer),
            }
        }
        if session.is_http2() && cache::tail::served_from_cache(session.cache.phase()) {
            ctx.held_tail.pass(body, end_of_stream);
        }
        Ok(None)
    }

    /// A failed attempt: a JSON body that names the upstream and what went wrong.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(answer) = ctx.plugin_failure.take() {
            return send_plugin_failure(session, ctx, answer).await;
        }
        if let Some(refusal) = ctx.refusal.take() {
            let built = errors::json_error(refusal.status, refusal.code, refusal.message);
            return send_failure(session, refusal.status, built).await;
        }
        let status = errors::status_for(e);
        let upstream = ctx.route.as_ref().map_or("-", |r| r.upstream.name.as_str());
        let (code, message) = if errors::is_upstream(e) {
            let kind = errors::upstream_kind(e);
            (
                kind,
                format!(
                    "upstream `{upstream}` failed: {kind} ({})",
                    e.etype().as_str()
                ),
            )
        } else {
            (
                "proxy_error",
                format!("the request could not be proxied: {}", e.etype().as_str()),
            )
        };
        send_failure(session, status, errors::json_error(status, code, &message)).await
    }

    /// Metrics and the access log line; upstream errors counted by kind.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.metrics.in_flight.dec();
        if let Some(chain) = ctx.chain.as_mut() {
            let code = session.response_written().map(|r| r.status.as_u16());
            let plugins = &ctx.generation.plugins;
            let leftovers = chain.finish(&plugins.host.plugins, session.req_header_mut(), code);
            if let Some(leftovers) = leftovers {
                tokio::spawn(leftovers.run(plugins.callouts.clone()));
            }
        }
        let status_code = session.response_written().map(|r| r.status);
        let status = status_code.map_or(0, |s| s.as_u16());
        let ctx = &*ctx;
        let route = ctx.route_label();
        let elapsed = ctx.started.elapsed();
        self.metrics
            .requests
            .with_label_values(&[route, status_code.as_ref().map_or("0", |s| s.as_str())])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if ctx.cache_policy().is_some() {
            self.metrics
                .cache_lookups
                .with_label_values(&[route, ctx.cache_result])
                .inc();
            if session.cache.lock_duration().is_some() {
                self.metrics
                    .cache_coalesced
                    .with_label_values(&[route])
                    .inc();
            }
        }
        let upstream = ctx.route.as_ref().map(|r| r.upstream.name.as_str());
        if let (Some(error), Some(upstream)) = (e, upstream) {
            if errors::is_upstream(error) {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[upstream, errors::upstream_kind(error)])
                    .inc();
            }
        }
        if self.access_log.is_on() {
            let request = session.req_header();
            self.access_log.record(&access_log::Line {
                request_id: &ctx.request_id,
                client: hygiene::client_addr(session),
                method: request.method.as_str(),
                target: request.uri.path_and_query().map_or("/", |p| p.as_str()),
                status,
                bytes: session.body_bytes_sent(),
                route,
                upstream,
                reused: ctx.reused,
                cache: ctx.cache_result,
                duration: elapsed,
                error: e.map(|e| e.etype().as_str()),
                protocol: hygiene::protocol_name(request.version),
                tls: ctx.tls.as_deref(),
            });
        }
    }
}
