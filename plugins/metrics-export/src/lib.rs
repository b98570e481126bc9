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
    use plugin_support::ConfiguredPlugin;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::Action;

    use crate::filter::{Answered, Recorder, Seen};
    use crate::labels::Guard;

    proxy_wasm::main! {{
        plugin_support::register::<RequestMetrics>();
    }}

    impl ConfiguredPlugin for RequestMetrics {
        const NAME: &'static str = "metrics-export";
        type Settings = Guard;
        /// One recorder per VM: its series registry is shared by the VM's requests.
        type State = Recorder;

        fn parse(bytes: &[u8]) -> Result<Guard, String> {
            Guard::parse(bytes)
        }

        fn build(guard: std::rc::Rc<Guard>) -> Recorder {
            Recorder::new(guard)
        }

        fn context(recorder: &Recorder) -> Box<dyn HttpContext> {
            Box::new(RequestMetrics {
                recorder: recorder.clone(),
                seen: None,
                answered: Answered::default(),
            })
        }
    }

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
