//! Graceful-upgrade handover, from the running (old) process's side: on SIGQUIT it hands its
//! listening sockets over only to a successor that is ready to take them, i.e. one listening on
//! the upgrade socket. A successor that failed to start (bad config, a plugin refusing its
//! configuration) never binds that socket, so the old process keeps serving instead of handing
//! its sockets to nobody and draining to an empty port.
//!
//! Readiness is read from `/proc/net/unix` ([`crate::listening`]), not by connecting: the
//! successor accepts exactly one connection on it, the one carrying the sockets.

use std::path::Path;
use std::time::{Duration, Instant};

/// How often the old process looks for its successor.
const POLL: Duration = Duration::from_millis(50);

/// Waits up to `timeout` for a successor to listen on `path`; true when one does.
pub async fn wait_for_successor(path: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if crate::listening::unix_listening(path) {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_real_listener_is_seen_and_its_absence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!wait_for_successor(&path, Duration::from_millis(120)).await);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(wait_for_successor(&path, Duration::from_secs(2)).await);
    }
}
