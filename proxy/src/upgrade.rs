//! Graceful-upgrade handover, from the running (old) process's side: on SIGQUIT it hands its
//! listening sockets over only to a successor that is ready to take them, i.e. one listening on
//! the upgrade socket. A successor that failed to start (bad config, a plugin refusing its
//! configuration) never binds that socket, so the old process keeps serving instead of handing
//! its sockets to nobody and draining to an empty port.
//!
//! Readiness is read from `/proc/net/unix` (a listening socket bound to the path), not by
//! connecting: the successor accepts exactly one connection on it, the one carrying the sockets.

use std::path::Path;
use std::time::{Duration, Instant};

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags column: the socket is listening.
const LISTENING_FLAG: u32 = 0x0001_0000;

/// How often the old process looks for its successor.
const POLL: Duration = Duration::from_millis(50);

/// Whether `table` (the text of `/proc/net/unix`) has a listening socket bound to `path`.
pub fn listening_in(table: &str, path: &str) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path
        let (Some(flags), Some(bound)) = (fields.get(3), fields.get(7)) else {
            return false;
        };
        *bound == path
            && u32::from_str_radix(flags, 16).is_ok_and(|flags| flags & LISTENING_FLAG != 0)
    })
}

/// Whether a process listens on the unix socket at `path` right now.
pub fn successor_listening(path: &Path) -> bool {
    let Some(path) = path.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| listening_in(&table, path))
}

/// Waits up to `timeout` for a successor to listen on `path`; true when one does.
pub async fn wait_for_successor(path: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if successor_listening(path) {
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

    const TABLE: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 27345 /tmp/edge-proxy-upgrade.sock\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 27346 /tmp/other.sock\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 27347\n";

    #[test]
    fn only_a_listening_socket_bound_to_the_path_counts() {
        assert!(listening_in(TABLE, "/tmp/edge-proxy-upgrade.sock"));
        assert!(
            !listening_in(TABLE, "/tmp/other.sock"),
            "connected, not listening"
        );
        assert!(!listening_in(TABLE, "/tmp/absent.sock"));
        assert!(!listening_in("", "/tmp/edge-proxy-upgrade.sock"));
    }

    #[tokio::test]
    async fn a_real_listener_is_seen_and_its_absence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!wait_for_successor(&path, Duration::from_millis(120)).await);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(wait_for_successor(&path, Duration::from_secs(2)).await);
    }
}
