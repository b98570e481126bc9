//! Business metrics filter (proxy-wasm, `wasm32-wasip1`): for every request it sees, a counter
//! `<prefix>requests_total` by category, brand, size (from the query), status class, cache
//! result (`X-Cache`) and client class (from the `auth.client_id` property), and a histogram
//! `<prefix>request_duration_us` (microseconds, request headers to log) by category, cache
//! result and status class. Series are defined with `proxy_define_metric` the first time a label
//! set is seen (the host exports them as `edge_plugin_<name>{plugin=...,...}`); every label value
//! is bounded by [`labels::Guard`].

pub mod filter;
pub mod labels;

/// The plugin itself (off when another plugin composes this crate's [`filter`]).
#[cfg(feature = "filter")]
mod plugin {
    use plugin_support::ConfiguredRoot;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, LogLevel};

    use crate::filter::{Answered, Recorder, Seen};
    use crate::labels::Guard;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(ConfiguredRoot::new(
                "metrics-export",
                Guard::parse,
                // One recorder per VM: its series registry is shared by the VM's requests.
                Box::new(Recorder::new),
                Box::new(|recorder: &Recorder| -> Box<dyn HttpContext> {
                    Box::new(RequestMetrics {
                        recorder: recorder.clone(),
                        seen: None,
                        answered: Answered::default(),
                    })
                }),
            ))
        });
    }}

    struct RequestMetrics {
        recorder: Recorder,
        seen: Option<Seen>,
        answered: Answered,
    }

    impl Context for RequestMetrics {}

    impl HttpContext for RequestMetrics {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            let started = self.get_current_time();
            let target = self.get_http_request_header(":path").unwrap_or_default();
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let client_id = plugin_support::published_client_id();
            self.seen = Some(self.recorder.start(query, client_id.as_deref(), started));
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.answered = Recorder::answered();
            Action::Continue
        }

        fn on_log(&mut self) {
            if let Some(seen) = self.seen.take() {
                self.recorder.log(seen, self.answered);
            }
        }
    }
}
