//! A filter written as any Envoy plugin author would (unmodified `proxy-wasm` SDK), used by the
//! host's integration tests. The request header `x-probe` picks a behaviour:
//! `deny` (local 403), `trap` (panic), `loop` (spins past the CPU deadline), `bomb` (allocates
//! past the memory cap), `count` (CAS increment of shared data), `callout` (asks the `authz`
//! upstream, 200 resumes and 403 denies), `callout-unknown` (an upstream not allowed),
//! `hold-then-trap` (buffers the response body, then traps at its end),
//! `deny-in-request-body` / `deny-in-response-body` (a local response from a body callback at
//! the end of the stream), `callout-in-log` (asks `authz` from `on_log`; the answer's status
//! lands in shared data), `tls` (the connection's properties as Envoy names them, echoed in
//! `x-seen-*` response headers: scheme, protocol, mTLS, TLS version, SNI, peer subject). With
//! `x-probe-target: <greeting>`, only the plugin configured with that greeting acts on the probe
//! (chains of this plugin). With `tick_ms` in its config the root context ticks (and, with
//! `tick_callout`, calls out).
//! Every request also gets header edits both ways, config and property round trips, a metric.

use std::rc::Rc;
use std::time::Duration;

use plugin_support::CREATE_ONLY;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    greeting: String,
    #[serde(default)]
    reject: bool,
    /// Tick period in ms (0: none); each tick counts in shared data and, with
    /// `tick_callout`, asks the `authz` upstream (the answer's status lands in shared data).
    #[serde(default)]
    tick_ms: u64,
    #[serde(default)]
    tick_callout: bool,
    /// The answer to a tick's callout dispatches a follow-up callout (`/followup`); its
    /// answers count in `conformance_tick_followups_total`.
    #[serde(default)]
    tick_followup: bool,
    /// The follow-up's `:path` (default `/followup`).
    #[serde(default)]
    followup_path: Option<String>,
}

#[derive(Default)]
struct Root {
    config: Rc<Config>,
    requests_metric: u32,
    followups_metric: u32,
    /// Tokens of follow-up callouts in flight.
    followups: Vec<u32>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        if let Some(at) = self.followups.iter().position(|t| *t == token) {
            self.followups.swap_remove(at);
            let _ = proxy_wasm::hostcalls::increment_metric(self.followups_metric, 1);
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "failed".into());
        let _ = self.set_shared_data("conformance/tick-callout", Some(status.as_bytes()), None);
        if self.config.tick_followup {
            let path = self.config.followup_path.as_deref().unwrap_or("/followup");
            let headers = vec![(":method", "GET"), (":path", path), (":authority", "authz")];
            if let Ok(token) =
                self.dispatch_http_call("authz", headers, None, vec![], Duration::from_secs(5))
            {
                self.followups.push(token);
            }
        }
    }
}

impl RootContext for Root {
    fn on_tick(&mut self) {
        increment_shared(self, "conformance/ticks");
        if self.config.tick_callout {
            let headers = vec![
                (":method", "GET"),
                (":path", "/tick"),
                (":authority", "authz"),
            ];
            let _ = self.dispatch_http_call("authz", headers, None, vec![], Duration::from_secs(5));
        }
    }

    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.requests_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "conformance_requests_total")
                .unwrap_or(0);
        self.followups_metric = proxy_wasm::hostcalls::define_metric(
            MetricType::Counter,
            "conformance_tick_followups_total",
        )
        .unwrap_or(0);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = serde_json::from_slice(&bytes).unwrap_or_default();
        if config.reject {
            return false;
        }
        if config.tick_ms > 0 {
            self.set_tick_period(Duration::from_millis(config.tick_ms));
        }
        self.config = Rc::new(config);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            config: self.config.clone(),
            requests_metric: self.requests_metric,
            probe: String::new(),
            streamed: [Streamed::default(); 2],
        }))
    }
}

struct Probe {
    config: Rc<Config>,
    requests_metric: u32,
    /// The request's `x-probe` value.
    probe: String,
    /// What `stream-body` saw of the request body, then of the response body.
    streamed: [Streamed; 2],
}

/// The body callbacks one direction got: bytes, calls, and calls that said end of stream.
#[derive(Debug, Default, Clone, Copy)]
struct Streamed {
    bytes: usize,
    calls: u32,
    ends: u32,
}

impl Probe {
    /// Counts one body callback of `direction` (0 request, 1 response) and records the tally
    /// under `conformance/streamed-{request,response}` ("<bytes> bytes, <calls> calls, <ends>
    /// ends"), shown by later responses.
    fn stream(&mut self, direction: usize, size: usize, end_of_stream: bool) {
        let seen = &mut self.streamed[direction];
        // `size` is the whole body so far when buffering; this probe never buffers.
        seen.bytes += size;
        seen.calls += 1;
        seen.ends += u32::from(end_of_stream);
        let tally = format!(
            "{} bytes, {} calls, {} ends",
            seen.bytes, seen.calls, seen.ends
        );
        let key = [
            "conformance/streamed-request",
            "conformance/streamed-response",
        ][direction];
        let _ = self.set_shared_data(key, Some(tally.as_bytes()), None);
    }
}

/// The rewritten form of a body: upper case, marked.
fn rewrite(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_ascii_uppercase();
    out.extend_from_slice(b" [rewritten]");
    out
}

impl Context for Probe {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let status = self.get_http_call_response_header(":status");
        if self.probe == "callout-in-log" {
            let status = status.unwrap_or_else(|| "failed".into());
            let _ = self.set_shared_data("conformance/log-callout", Some(status.as_bytes()), None);
            return;
        }
        let body = self
            .get_http_call_response_body(0, 1024)
            .unwrap_or_default();
        if status.as_deref() == Some("200") {
            self.set_http_request_header("x-authz-body", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_request();
        } else {
            let code = status.unwrap_or_else(|| "failed".into());
            self.send_http_response(
                403,
                vec![("x-authz-status", code.as_str())],
                Some(b"callout denied"),
            );
        }
    }
}

/// Adds one to the decimal counter at `key`, retrying on CAS mismatch; an absent counter is
/// created with [`CREATE_ONLY`], so racing creators cannot lose each other's increments.
fn increment_shared(context: &dyn Context, key: &str) {
    loop {
        let (value, cas) = context.get_shared_data(key);
        let n: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if context
            .set_shared_data(
                key,
                Some((n + 1).to_string().as_bytes()),
                cas.or(CREATE_ONLY),
            )
            .is_ok()
        {
            return;
        }
    }
}

impl HttpContext for Probe {
    fn on_log(&mut self) {
        if self.probe == "callout-in-log" {
            let headers = vec![
                (":method", "GET"),
                (":path", "/log"),
                (":authority", "authz"),
            ];
            let _ = self.dispatch_http_call("authz", headers, None, vec![], Duration::from_secs(5));
        }
    }

    fn on_http_request_headers(&mut self, _headers: usize, _end: bool) -> Action {
        let _ = proxy_wasm::hostcalls::increment_metric(self.requests_metric, 1);
        self.add_http_request_header("x-plugin-seen", "yes");
        self.set_http_request_header("x-replace-me", Some("replaced"));
        self.set_http_request_header("x-remove-me", None);
        if let Some(client) = self.get_http_request_header("x-client") {
            self.set_property(vec!["conformance", "client"], Some(client.as_bytes()));
        }
        let targeted = self
            .get_http_request_header("x-probe-target")
            .is_none_or(|target| target == self.config.greeting);
        if targeted {
            self.probe = self.get_http_request_header("x-probe").unwrap_or_default();
        }
        match Some(self.probe.as_str()).filter(|p| !p.is_empty()) {
            Some("deny") => {
                self.send_http_response(
                    403,
                    vec![("x-denied-by", "conformance")],
                    Some(b"denied by plugin"),
                );
                Action::Pause
            }
            Some("trap") => panic!("conformance: asked to trap"),
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = n.wrapping_add(1);
                    if n == u64::MAX {
                        return Action::Continue;
                    }
                    std::hint::black_box(n);
                }
            }
            Some("bomb") => {
                // Reserve (without touching) 8 MiB at a time: fast, so it is the memory cap
                // and not the CPU deadline that stops it.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(8 * 1024 * 1024));
                    std::hint::black_box(&hoard);
                }
            }
            Some("count") => {
                increment_shared(self, "conformance/count");
                Action::Continue
            }
            Some(probe @ ("callout" | "callout-unknown")) => {
                let upstream = if probe == "callout" {
                    "authz"
                } else {
                    "not-allowed"
                };
                let path = self
                    .get_http_request_header("x-authz-path")
                    .unwrap_or_else(|| "/allow".into());
                let headers = vec![
                    (":method", "GET"),
                    (":path", path.as_str()),
                    (":authority", "authz"),
                ];
                match self.dispatch_http_call(
                    upstream,
                    headers,
                    None,
                    vec![],
                    Duration::from_secs(5),
                ) {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        let why = format!("{status:?}");
                        self.send_http_response(
                            502,
                            vec![("x-callout-error", why.as_str())],
                            Some(b"callout refused"),
                        );
                        Action::Pause
                    }
                }
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.probe == "deny-in-request-body" && end_of_stream {
            self.send_http_response(
                403,
                vec![("x-denied-in", "request-body")],
                Some(b"denied in body"),
            );
            return Action::Pause;
        }
        if self.probe == "stream-body" {
            self.stream(0, size, end_of_stream);
        }
        if self.probe != "rewrite-request" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &rewrite(&body));
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.probe == "deny-in-response-body" && end_of_stream {
            self.send_http_response(403, vec![], Some(b"denied in response body"));
            return Action::Pause;
        }
        if self.probe == "stream-body" {
            self.stream(1, size, end_of_stream);
        }
        if self.probe == "hold-then-trap" {
            // Buffers the whole body, then fails with the head already sent.
            if end_of_stream {
                panic!("conformance: failing after holding the response body");
            }
            return Action::Pause;
        }
        if self.probe != "rewrite-response" && self.probe != "hold-response" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        self.set_http_response_body(0, size, &rewrite(&body));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end: bool) -> Action {
        match self.probe.as_str() {
            // Envoy's idiom before changing a body's length.
            "rewrite-response" => self.set_http_response_header("content-length", None),
            // Or stop iteration: the host must not announce the old length.
            "hold-response" => return Action::Pause,
            _ => {}
        }
        self.set_http_response_header("x-greeting", Some(&self.config.greeting));
        self.add_http_response_header("x-plugin-response", "yes");
        self.set_http_response_header("x-drop-me", None);
        if let Some(path) = self.get_property(vec!["request", "path"]) {
            self.set_http_response_header("x-seen-path", Some(&String::from_utf8_lossy(&path)));
        }
        if let Some(client) = self.get_property(vec!["conformance", "client"]) {
            self.set_http_response_header("x-seen-client", Some(&String::from_utf8_lossy(&client)));
        }
        for (key, header) in [
            ("conformance/count", "x-count"),
            ("conformance/ticks", "x-ticks"),
            ("conformance/tick-callout", "x-tick-callout"),
            ("conformance/streamed-request", "x-streamed-request"),
            ("conformance/streamed-response", "x-streamed-response"),
            ("conformance/log-callout", "x-log-callout"),
        ] {
            if let (Some(value), _) = self.get_shared_data(key) {
                self.set_http_response_header(header, Some(&String::from_utf8_lossy(&value)));
            }
        }
        if self.probe == "tls" {
            for (path, header) in [
                (vec!["request", "scheme"], "x-seen-scheme"),
                (vec!["request", "protocol"], "x-seen-protocol"),
                (vec!["connection", "tls_version"], "x-seen-tls-version"),
                (vec!["connection", "requested_server_name"], "x-seen-sni"),
                (
                    vec!["connection", "subject_peer_certificate"],
                    "x-seen-peer-subject",
                ),
            ] {
                let value = self.get_property(path);
                let value = value.as_deref().map(String::from_utf8_lossy);
                self.set_http_response_header(header, Some(value.as_deref().unwrap_or("-")));
            }
            let mtls = match self.get_property(vec!["connection", "mtls"]).as_deref() {
                Some([1]) => "true",
                Some(_) => "false",
                None => "-",
            };
            self.set_http_response_header("x-seen-mtls", Some(mtls));
        }
        if let Some(root_id) = self.get_property(vec!["plugin_root_id"]) {
            self.set_http_response_header("x-root-id", Some(&String::from_utf8_lossy(&root_id)));
        }
        if let Some(cache) = self.get_http_response_header("x-cache") {
            self.set_http_response_header("x-seen-cache", Some(&cache));
        }
        Action::Continue
    }
}
