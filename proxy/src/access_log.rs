//! The access log (`access_log:` in the config): one logfmt line per request, written off the
//! request path. A request formats its line and appends it to a shared buffer (a short lock, no
//! system call); a writer thread writes the buffer out every [`FLUSH_EVERY`], and the request
//! that fills it past [`FLUSH_AT`] writes it at once, so memory stays bounded and a destination
//! that cannot keep up slows requests down rather than growing the buffer. Destinations: off,
//! stdout, or a file (appended to; reopened on every reload, so it can be rotated by renaming it
//! and reloading). The line format is documented in the README ("Access log").

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

/// How often the writer thread writes buffered lines out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Buffered bytes at which the request that adds a line writes them out itself.
pub const FLUSH_AT: usize = 64 * 1024;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    Stdout,
    File(PathBuf),
}

/// As the config spells it.
impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What one request's line says.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub request_id: &'a str,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// Path and query as received.
    pub target: &'a str,
    /// 0 when no response was sent.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    /// Whether the upstream connection was a reused one (`None`: no upstream request).
    pub reused: Option<bool>,
    pub cache: &'a str,
    pub duration: Duration,
    pub error: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    /// The client's TLS connection (`None`: plain HTTP).
    pub tls: Option<&'a crate::tls::client::ClientTls>,
}

/// The process's access log; cheap to clone. `Default` is off.
#[derive(Debug, Clone, Default)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    sink: Mutex<Sink>,
    /// A write failed and has not succeeded since (logged once per episode).
    failing: AtomicBool,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl AccessLog {
    /// Opens `destination` and starts its writer thread.
    pub fn open(destination: &Destination) -> std::io::Result<Self> {
        Self::open_with(destination, true)
    }

    fn open_with(destination: &Destination, writer_thread: bool) -> std::io::Result<Self> {
        let sink = match destination {
            Destination::Off => return Ok(Self::default()),
            Destination::Stdout => Sink::Stdout,
            Destination::File(path) => Sink::File {
                path: path.clone(),
                file: open_append(path)?,
            },
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(FLUSH_AT)),
            sink: Mutex::new(sink),
            failing: AtomicBool::new(false),
        });
        if writer_thread {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_periodically(&weak))?;
        }
        Ok(Self {
            shared: Some(shared),
        })
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Adds one request's line.
    pub fn record(&self, line: &Line<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        thread_local! {
            static SCRATCH: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        SCRATCH.with(|scratch| {
            let mut text = scratch.borrow_mut();
            text.clear();
            format_line(&mut text, SystemTime::now(), line);
            let full = {
                let mut pending = shared.lock_pending();
                pending.extend_from_slice(text.as_bytes());
                (pending.len() >= FLUSH_AT).then(|| std::mem::take(&mut *pending))
            };
            if let Some(full) = full {
                shared.write_out(&full);
            }
        });
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.flush();
        }
    }

    /// Reopens the file (after it was renamed for rotation); lines buffered so far go to the
    /// old one. Stdout and off: nothing to do.
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        shared.flush();
        let mut sink = shared.sink.lock().unwrap_or_else(PoisonError::into_inner);
        if let Sink::File { path, file } = &mut *sink {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

impl Shared {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush(&self) {
        let lines = std::mem::take(&mut *self.lock_pending());
        if !lines.is_empty() {
            self.write_out(&lines);
        }
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let written = match &mut *sink {
            Sink::Stdout => std::io::stdout().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        };
        match written {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("access log: writing again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "access log: write failed; lines are lost until it works again");
                }
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.flush();
    }
}

fn write_periodically(shared: &Weak<Shared>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        match shared.upgrade() {
            Some(shared) => shared.flush(),
            None => return,
        }
    }
}

/// `line` in logfmt, newline-terminated: `ts=... request_id=... client=... method=...
/// target="..." status=... bytes=... route=... upstream=... reused=... cache=...
/// duration_ms=... error=... protocol=... tls=... client_cert="..."` (`-` for an absent value).
fn format_line(out: &mut String, now: SystemTime, line: &Line<'_>) {
    let reused = match line.reused {
        Some(true) => "true",
        Some(false) => "false",
        None => "-",
    };
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "ts={} request_id={} client=",
        humantime::format_rfc3339_millis(now),
        line.request_id,
    );
    match line.client {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push('-'),
    }
    let _ = write!(out, " method={} target=\"", line.method);
    push_escaped(out, line.target);
    let _ = write!(
        out,
        "\" status={} bytes={} route={} upstream={} reused={reused} cache={} duration_ms={:.3} error={}",
        line.status,
        line.bytes,
        line.route,
        line.upstream.unwrap_or("-"),
        line.cache,
        line.duration.as_secs_f64() * 1000.0,
        line.error.unwrap_or("-"),
    );
    let tls = line.tls.map_or("-", |t| t.version);
    let _ = write!(out, " protocol={} tls={tls} client_cert=", line.protocol);
    match line.tls.and_then(|t| t.peer_subject.as_deref()) {
        Some(subject) => {
            out.push('"');
            push_escaped(out, subject);
            out.push_str("\"\n");
        }
        None => out.push_str("-\n"),
    }
}

/// `text` inside double quotes: `"` and `\` escaped, control characters as `\xNN`. Runs of
/// plain characters (the whole target, usually) are copied at once.
fn push_escaped(out: &mut String, text: &str) {
    let special = |c: char| c == '"' || c == '\\' || c.is_control();
    let mut rest = text;
    while let Some(at) = rest.find(special) {
        out.push_str(&rest[..at]);
        let Some(c) = rest[at..].chars().next() else {
            break;
        };
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            request_id: "abc123",
            client: Some(IpAddr::from([127, 0, 0, 1])),
            method: "GET",
            target: "/api/v1/products?category=polo&q=\"x\\y",
            status: 200,
            bytes: 3143,
            route: "catalog",
            upstream: Some("catalog"),
            reused: Some(true),
            cache: "HIT",
            duration: Duration::from_micros(1234),
            error: None,
            protocol: "HTTP/1.1",
            tls: None,
        }
    }

    #[test]
    fn a_line_is_logfmt_with_the_target_quoted_and_escaped() {
        let mut out = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        format_line(&mut out, at, &line());
        assert_eq!(
            out,
            "ts=2023-11-14T22:13:20.123Z request_id=abc123 client=127.0.0.1 method=GET \
             target=\"/api/v1/products?category=polo&q=\\\"x\\\\y\" status=200 bytes=3143 \
             route=catalog upstream=catalog reused=true cache=HIT duration_ms=1.234 error=- \
             protocol=HTTP/1.1 tls=- client_cert=-\n"
        );
    }

    #[test]
    fn a_tls_line_names_the_version_and_the_client_certificate_subject() {
        let tls = crate::tls::client::ClientTls {
            version: "TLSv1.3",
            server_name: Some("shop.example".into()),
            resumed: false,
            peer_subject: Some("CN=cdn \"pull\",O=CDN".into()),
        };
        let mut out = String::new();
        format_line(
            &mut out,
            SystemTime::UNIX_EPOCH,
            &Line {
                protocol: "HTTP/2",
                tls: Some(&tls),
                ..line()
            },
        );
        assert!(
            out.ends_with(
                " protocol=HTTP/2 tls=TLSv1.3 client_cert=\"CN=cdn \\\"pull\\\",O=CDN\"\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn escaping_keeps_plain_runs_and_marks_control_characters() {
        let mut out = String::new();
        push_escaped(&mut out, "/a\tb\u{7f}\"é\\z");
        assert_eq!(out, "/a\\x09b\\x7f\\\"é\\\\z");
        out.clear();
        push_escaped(&mut out, "");
        assert_eq!(out, "");
    }

    #[test]
    fn lines_reach_the_file_on_flush_and_after_a_reopen_go_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&Destination::File(path.clone())).unwrap();
        log.record(&line());
        log.flush();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.lines().count(), 1, "{first}");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.record(&line());
        log.reopen().unwrap();
        log.record(&Line {
            status: 404,
            ..line()
        });
        drop(log);
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains(" status=404 "), "{new}");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_request_that_fills_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        // No writer thread: only the requests write.
        let log = AccessLog::open_with(&Destination::File(path.clone()), false).unwrap();
        let mut one = String::new();
        format_line(&mut one, SystemTime::now(), &line());
        let needed = FLUSH_AT.div_ceil(one.len());
        for _ in 0..needed - 1 {
            log.record(&line());
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        log.record(&line());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.lines().count(), needed, "{}", written.len());
        drop(log);
    }
}
