//! The admin listener (loopback only): `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (ready for traffic; 503 once shutdown has begun), `POST /cache/purge?url=...` or
//! `?category=...` behind `cache.purge_token`, `POST /config/reload` behind `admin.token`, and
//! with `admin.profiling`, `GET /debug/pprof/profile?seconds=N[&format=svg]` behind it too
//! (bearer tokens, compared in constant time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::cache::storage::MokaStorage;
use crate::generation::Current;
use crate::metrics::Metrics;
use crate::profiling::{self, Format, ProfileError};
use crate::purge::{PurgeError, PurgeOrder, Purger};
use crate::reload::Reloader;

const JSON: &str = "application/json";

pub struct AdminApp {
    current: Current,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    cache: &'static MokaStorage,
    purger: Purger,
}

impl std::fmt::Debug for AdminApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApp").finish_non_exhaustive()
    }
}

impl AdminApp {
    pub fn new(
        current: Current,
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        cache: &'static MokaStorage,
        purger: Purger,
    ) -> Self {
        Self {
            purger,
            current,
            reloader,
            metrics,
            draining,
            cache,
        }
    }

    fn metrics_text(&self) -> Vec<u8> {
        let (entries, bytes) = self.cache.usage();
        let m = &self.metrics;
        m.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        m.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let evictions = self.cache.counters().evictions.load(Ordering::Relaxed);
        m.cache_evictions
            .set(i64::try_from(evictions).unwrap_or(i64::MAX));
        let generation = self.current.load();
        let shared = &generation.plugins.host.shared_data;
        let (entries, bytes) = shared.usage();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        m.shared_data_entries.set(gauge(entries));
        m.shared_data_bytes.set(gauge(bytes));
        let counters = shared.counters();
        for (kind, counter) in [
            ("expired", &counters.expired),
            ("evicted", &counters.evicted),
            ("refused", &counters.refused),
        ] {
            let n = counter.load(Ordering::Relaxed);
            m.shared_data_losses
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.render()
    }

    /// `Authorization: Bearer <token>`, compared in constant time; `None` (no token configured)
    /// answers 403 with `disabled` as the message.
    fn authorized(
        session: &ServerSession,
        token: Option<&str>,
        disabled: &str,
    ) -> Result<(), Box<Response<Vec<u8>>>> {
        let Some(token) = token else {
            return Err(Box::new(error(StatusCode::FORBIDDEN, "disabled", disabled)));
        };
        let presented = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            Ok(())
        } else {
            let mut denied = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            denied.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"edge-proxy admin\""),
            );
            Err(Box::new(denied))
        }
    }

    async fn purge(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        let generation = self.current.load_full();
        if let Err(denied) = Self::authorized(
            session,
            generation.config.purge_token.as_deref(),
            "set cache.purge_token to enable purging",
        ) {
            return *denied;
        }
        let query = session.req_header().uri.query().unwrap_or_default();
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string())
        };
        let order = match (get("category"), get("url")) {
            (Some(category), None) => PurgeOrder::Category(category),
            (None, Some(url)) => PurgeOrder::Url {
                url,
                host: get("host"),
            },
            _ => return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of ?url=/path?query (absolute or with &host=) or ?category=name",
            ),
        };
        let purged = match self.purger.apply(&order) {
            Ok(purged) => purged,
            Err(e @ PurgeError::BadUrl) => {
                return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
            }
            Err(e @ PurgeError::NoRoute) => {
                return error(StatusCode::NOT_FOUND, "no_route", &e.to_string())
            }
            Err(e @ PurgeError::NotCached) => {
                return error(StatusCode::NOT_FOUND, "not_cached", &e.to_string())
            }
        };
        let body = match &generation.plugins.cluster {
            // Every instance sharing the Redis: how many applied it within the timeout.
            Some(cluster) => {
                let acks = cluster.fan_out_purge(&order).await;
                serde_json::json!({
                    "purged": purged,
                    "instances": {
                        "acknowledged": acks.acknowledged,
                        "alive": acks.alive,
                        "reached_redis": acks.reached_redis,
                    }
                })
                .to_string()
            }
            None => format!("{{\"purged\":{purged}}}"),
        };
        reply(StatusCode::OK, JSON, body.into_bytes())
    }
}

impl AdminApp {
    /// Re-reads the config file: 200 with the new generation (and what needs a restart), or 422
    /// with every problem (the running configuration stays).
    async fn reload(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        let token = self.current.load().config.admin_token.clone();
        if let Err(denied) = Self::authorized(
            session,
            token.as_deref(),
            "set admin.token to enable reloads over HTTP (SIGHUP always reloads)",
        ) {
            return *denied;
        }
        let reloader = self.reloader.clone();
        let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
        let (status, body) = match outcome {
            Ok(Ok(done)) => (
                StatusCode::OK,
                serde_json::json!({"generation": done.generation, "restart_required": done.restart_required}),
            ),
            Ok(Err(e)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": {"status": 422, "code": "reload_refused", "message": "the running configuration stays", "problems": e.problems()}}),
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": {"status": 500, "code": "reload_failed", "message": e.to_string()}}),
            ),
        };
        reply(status, JSON, body.to_string().into_bytes())
    }
}

impl AdminApp {
    /// A CPU profile of the whole process for `seconds` (default 30, at most
    /// [`profiling::MAX_SECONDS`]): pprof protobuf, or a flame graph with `format=svg`.
    async fn profile(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
        }
        let config = self.current.load().config.clone();
        if !config.admin_profiling {
            return error(
                StatusCode::FORBIDDEN,
                "disabled",
                "set admin.profiling: true (and admin.token) to enable profiles",
            );
        }
        if let Err(denied) = Self::authorized(session, config.admin_token.as_deref(), "") {
            return *denied;
        }
        let (seconds, format) = match profile_query(session.req_header().uri.query()) {
            Ok(asked) => asked,
            Err(message) => return error(StatusCode::BAD_REQUEST, "bad_query", &message),
        };
        let taken = tokio::task::spawn_blocking(move || {
            profiling::profile(std::time::Duration::from_secs(seconds), format)
        })
        .await;
        match taken {
            Ok(Ok(bytes)) => match format {
                Format::Svg => reply(StatusCode::OK, "image/svg+xml", bytes),
                Format::Protobuf => reply(StatusCode::OK, "application/octet-stream", bytes),
            },
            Ok(Err(ProfileError::Busy)) => error(
                StatusCode::CONFLICT,
                "busy",
                "a profile is already being taken: try again when it is done",
            ),
            Ok(Err(e)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "profile_failed",
                &e.to_string(),
            ),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "profile_failed",
                &e.to_string(),
            ),
        }
    }
}

/// `seconds` (1..=MAX, default 30) and `format` (`pprof`, the default, or `svg`).
fn profile_query(query: Option<&str>) -> Result<(u64, Format), String> {
    let (mut seconds, mut format) = (30, Format::Protobuf);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "seconds" => {
                seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=profiling::MAX_SECONDS).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "seconds must be 1 to {}, not `{value}`",
                            profiling::MAX_SECONDS
                        )
                    })?;
            }
            "format" => {
                format = match value.as_ref() {
                    "pprof" | "proto" => Format::Protobuf,
                    "svg" => Format::Svg,
                    other => return Err(format!("format must be pprof or svg, not `{other}`")),
                };
            }
            _ => {}
        }
    }
    Ok((seconds, format))
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

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let body =
        serde_json::json!({"error": {"status": status.as_u16(), "code": code, "message": message}});
    reply(status, JSON, body.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics_text(),
            ),
            "/healthz" => reply(StatusCode::OK, JSON, br#"{"status":"ok"}"#.to_vec()),
            "/readyz" if self.draining.load(Ordering::Relaxed) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                JSON,
                br#"{"status":"draining"}"#.to_vec(),
            ),
            "/readyz" => reply(StatusCode::OK, JSON, br#"{"status":"ready"}"#.to_vec()),
            "/cache/purge" => self.purge(session).await,
            "/config/reload" => self.reload(session).await,
            "/debug/pprof/profile" => self.profile(session).await,
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "admin endpoints: /metrics /healthz /readyz, POST /cache/purge, POST /config/reload, GET /debug/pprof/profile",
            ),
        }
    }
}
