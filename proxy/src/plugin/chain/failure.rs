//! The failure policy of a chain: why a plugin's callback did not complete ([`CallError`]),
//! what the plugin's `failure_mode` makes of it (a 503, or the plugin skipped for the rest of
//! the request), and the answers the host sends instead of a plugin's (a failed plugin, a body
//! held beyond `limits.max_body_bytes`). The client gets the proxy's usual JSON error with
//! `cache-control: no-store`; what went wrong inside the plugin (a trap's wasm backtrace, say)
//! goes to the log only.

use super::super::host::RunningPlugin;
use super::super::state::{BodyKind, LocalResponse};
use super::super::{FailureMode, Fault, PluginError};
use super::Chain;

/// Why a plugin's callback did not complete for a request.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Its VM could not be (re)built.
    #[error("{0}")]
    Unavailable(#[from] PluginError),
    /// The callback trapped, overran its CPU deadline or its memory cap.
    #[error("{0}")]
    Fault(#[from] Fault),
    /// Its VM was rebuilt (another request's fault) while the plugin's callout was in flight.
    #[error("its VM was rebuilt while the plugin's callout was in flight")]
    Rebuilt,
    /// Its VM was rebuilt under the request (another request's fault) and the request's
    /// earlier callbacks could not be re-run on the new one.
    #[error("re-running the request's earlier callbacks on the rebuilt VM failed: {0}")]
    Revive(Fault),
}

/// A JSON answer in the proxy's error format.
fn json_answer(status: u16, code: &str, details: String, message: &str) -> LocalResponse {
    LocalResponse {
        status,
        details,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("cache-control".into(), b"no-store".to_vec()),
        ],
        body: crate::errors::json_body(status, code, message).into_bytes(),
    }
}

/// The 503 a failed `closed` plugin answers with: the plugin's name, nothing of its insides.
pub fn failed_response(plugin: &str) -> LocalResponse {
    json_answer(
        503,
        "plugin_failed",
        format!("plugin_failed:{plugin}"),
        &format!("plugin `{plugin}` failed"),
    )
}

/// A plugin buffered more of a body than its `limits.max_body_bytes`: 413 for a request body
/// (the client sent too much), 502 for a response body (the upstream's answer cannot be
/// filtered).
pub fn body_too_large(plugin: &str, kind: BodyKind, limit: usize) -> LocalResponse {
    let (status, code, what) = match kind {
        BodyKind::Request => (413, "body_too_large", "request"),
        BodyKind::Response => (502, "response_too_large", "response"),
    };
    json_answer(
        status,
        code,
        format!("{code}:{plugin}"),
        &format!(
            "plugin `{plugin}` buffers the {what} body and it exceeds limits.max_body_bytes ({limit} bytes)"
        ),
    )
}

impl Chain {
    /// Applies the failure mode of the plugin at link `index` after `why`: it is skipped for
    /// the rest of the request, and when `closed` the request is answered 503 (as a local
    /// response of that plugin, so the plugins before it see it).
    pub(super) fn fail(
        &mut self,
        plugin: &RunningPlugin,
        index: usize,
        why: &CallError,
    ) -> Option<LocalResponse> {
        let link = &mut self.links[index];
        link.skipped = true;
        link.context = None;
        let mode = plugin.failure_mode();
        plugin.count_failure(mode);
        tracing::warn!(plugin = %plugin.name(), ?mode, %why, "plugin failed for this request");
        match mode {
            FailureMode::Closed => {
                self.answered_by(index);
                Some(failed_response(plugin.name()))
            }
            FailureMode::Open => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_answer_names_the_plugin_and_nothing_of_the_fault() {
        let answer = failed_response("auth");
        assert_eq!(answer.status, 503);
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["error"]["status"], 503);
        assert_eq!(body["error"]["code"], "plugin_failed");
        assert_eq!(body["error"]["message"], "plugin `auth` failed");
        assert!(answer
            .headers
            .contains(&("cache-control".into(), b"no-store".to_vec())));
        let large = body_too_large("auth", BodyKind::Request, 10);
        assert_eq!(large.status, 413);
        assert_eq!(body_too_large("a", BodyKind::Response, 1).status, 502);
    }
}
