//! Whether a socket is listening, read from the kernel's tables (`/proc/net/unix`,
//! `/proc/net/tcp`, `/proc/net/tcp6`) rather than by connecting to it: the upgrade handover
//! waits for a successor on the upgrade socket (which accepts exactly one connection), and
//! `run` says it listens only once its data-plane port really does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags column: the socket is listening.
const UNIX_LISTENING_FLAG: u32 = 0x0001_0000;

/// `TCP_LISTEN` in `/proc/net/tcp`'s `st` column.
const TCP_LISTEN: &str = "0A";

/// Whether `table` (the text of `/proc/net/unix`) has a listening socket bound to `path`.
pub fn unix_listening_in(table: &str, path: &str) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path
        let (Some(flags), Some(bound)) = (fields.get(3), fields.get(7)) else {
            return false;
        };
        *bound == path
            && u32::from_str_radix(flags, 16).is_ok_and(|flags| flags & UNIX_LISTENING_FLAG != 0)
    })
}

/// Whether a process listens on the unix socket at `path` right now.
pub fn unix_listening(path: &Path) -> bool {
    let Some(path) = path.to_str() else {
        return false;
    };
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| unix_listening_in(&table, path))
}

/// The address in `/proc/net/tcp{,6}` form: hex words in the kernel's byte order, `:` port.
fn parse_tcp_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether `table` (the text of `/proc/net/tcp` or `tcp6`) has a socket listening on `addr`.
pub fn tcp_listening_in(table: &str, addr: SocketAddr) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st ...
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            return false;
        };
        *state == TCP_LISTEN && parse_tcp_address(local) == Some(addr)
    })
}

/// Whether a socket listens on `addr` right now.
pub fn tcp_listening(addr: SocketAddr) -> bool {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    std::fs::read_to_string(table).is_ok_and(|text| tcp_listening_in(&text, addr))
}

/// Waits up to `timeout` for a socket to listen on `addr`; true when one does.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if tcp_listening(addr) {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 27345 /tmp/edge-proxy-upgrade.sock\n\
        0000000000000000: 00000003 00000000 00000000 0001 03 27346 /tmp/other.sock\n\
        0000000000000000: 00000002 00000000 00010000 0001 01 27347\n";

    #[test]
    fn only_a_listening_unix_socket_bound_to_the_path_counts() {
        assert!(unix_listening_in(UNIX, "/tmp/edge-proxy-upgrade.sock"));
        assert!(
            !unix_listening_in(UNIX, "/tmp/other.sock"),
            "connected, not listening"
        );
        assert!(!unix_listening_in(UNIX, "/tmp/absent.sock"));
        assert!(!unix_listening_in("", "/tmp/edge-proxy-upgrade.sock"));
    }

    #[test]
    fn tcp_tables_are_read_in_the_kernel_byte_order() {
        if cfg!(target_endian = "big") {
            return;
        }
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1F91 0100007F:C350 01 00000000:00000000\n";
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(tcp_listening_in(table, listen));
        let established: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert!(!tcp_listening_in(table, established));
        let v6 = "  sl  local_address rem_address st\n\
            0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A\n";
        assert!(tcp_listening_in(v6, "[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn a_real_tcp_listener_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(wait_for_tcp(addr, Duration::from_secs(2)));
        drop(listener);
        assert!(!wait_for_tcp(addr, Duration::from_millis(30)));
    }
}
