//! The total time a client gets to send a request head (`downstream.header_read_timeout`, as
//! NGINX's `client_header_timeout`). Pingora times each read of a head separately, so a client
//! sending one byte just under that timeout could hold a connection forever ("slowloris").
//!
//! [`HeaderDeadline`] wraps a client connection's stream: a deadline starts with the connection
//! (its first head) or with the first byte of each later head, and ends when the bytes read
//! complete the head (`\r\n\r\n`); past it, the read fails and Pingora closes the connection.
//! Idle time between requests is not head time (`downstream.keepalive_timeout` governs it). A
//! new head is expected after the proxy writes a final response head (a write starting with
//! `HTTP/1.` and a non-1xx status), so a `100 Continue` does not turn the body into a "head".
//! Body bytes are never scanned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where the connection is in its request/response cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a head: the deadline runs from its first byte (or from the connection start).
    Head,
    /// The head is complete: body bytes and idle time are not timed here.
    AfterHead,
}

/// Tracks head boundaries over the bytes read; pure, so it is unit tested.
#[derive(Debug, Clone)]
pub struct HeadTracker {
    phase: Phase,
    /// The last bytes of the head read so far (a `\r\n\r\n` may span reads).
    tail: [u8; 3],
    /// Whether bytes of the current head have arrived.
    started: bool,
}

impl Default for HeadTracker {
    fn default() -> Self {
        Self {
            phase: Phase::Head,
            tail: [0; 3],
            started: false,
        }
    }
}

impl HeadTracker {
    /// Whether a head is being read (bytes of it arrived, or the connection is new).
    pub fn in_head(&self) -> bool {
        self.phase == Phase::Head
    }

    /// Whether bytes of the current head have arrived.
    pub fn head_started(&self) -> bool {
        self.phase == Phase::Head && self.started
    }

    /// Feeds bytes read from the client; true when they completed the head.
    pub fn read(&mut self, bytes: &[u8]) -> bool {
        if self.phase != Phase::Head || bytes.is_empty() {
            return false;
        }
        // Each `\n` (memchr: a few per head) is checked for the `\r\n\r` before it, which may
        // lie in an earlier read.
        let before = |i: usize, back: usize| -> u8 {
            if i >= back {
                bytes[i - back]
            } else {
                self.tail[3 - (back - i)]
            }
        };
        for i in memchr::memchr_iter(b'\n', bytes) {
            if before(i, 1) == b'\r' && before(i, 2) == b'\n' && before(i, 3) == b'\r' {
                *self = Self {
                    phase: Phase::AfterHead,
                    ..Self::default()
                };
                return true;
            }
        }
        let mut tail = [self.tail[0], self.tail[1], self.tail[2]];
        for byte in bytes.iter().rev().take(3).rev() {
            tail = [tail[1], tail[2], *byte];
        }
        self.tail = tail;
        self.started = true;
        false
    }

    /// Feeds bytes the proxy writes: a final response head means the next bytes read start a
    /// new request head.
    pub fn wrote(&mut self, bytes: &[u8]) {
        let final_head = bytes.starts_with(b"HTTP/1.") && bytes.get(9).is_some_and(|b| *b != b'1');
        if final_head && self.phase == Phase::AfterHead {
            *self = Self::default();
        }
    }
}

/// A client stream whose request heads must arrive within `limit` each.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    tracker: HeadTracker,
    /// Running while a head is being read.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl HeaderDeadline {
    /// Wraps a new connection: its first head is timed from now.
    pub fn new(inner: Stream, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            tracker: HeadTracker::default(),
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not complete within downstream.header_read_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let fresh = &buf.filled()[before..];
            let started = this.tracker.head_started();
            if this.tracker.read(fresh) {
                this.deadline = None;
            } else if !started && this.tracker.head_started() && this.deadline.is_none() {
                this.deadline = Some(Box::pin(tokio::time::sleep_until(
                    Instant::now() + this.limit,
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, bytes);
        if let Poll::Ready(Ok(n)) = &polled {
            this.tracker.wrote(&bytes[..*n]);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&polled, bufs.iter().find(|b| !b.is_empty())) {
            if *n > 0 {
                this.tracker.wrote(&first[..first.len().min(*n)]);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::HeadTracker;

    #[test]
    fn heads_end_at_the_blank_line_even_across_reads() {
        let mut t = HeadTracker::default();
        assert!(t.in_head() && !t.head_started());
        assert!(!t.read(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(t.head_started());
        assert!(!t.read(b"\n\r"));
        assert!(t.read(b"\nbody bytes"));
        assert!(!t.in_head());
        assert!(!t.read(b"more body \r\n\r\n"), "body bytes are not scanned");
    }

    #[test]
    fn a_final_response_starts_the_next_head_an_interim_one_does_not() {
        let mut t = HeadTracker::default();
        t.read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        t.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(!t.in_head(), "the body follows a 100");
        t.wrote(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert!(
            t.in_head() && !t.head_started(),
            "idle until the next head's first byte"
        );
        t.read(b"G");
        assert!(t.head_started());
    }
}
