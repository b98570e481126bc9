//! The cap on concurrent client connections (`downstream.max_connections`), and the request
//! head deadline every client connection gets (`downstream.header_read_timeout`). A gate counts the
//! data plane's live connections: when the cap is reached the accept loop waits (Pingora's
//! connection filter runs inside it) until a connection ends, so excess clients queue in the
//! kernel's listen backlog instead of costing memory here; each pause is counted. The admin
//! listener is a separate service with no gate, so it stays reachable while the data plane is
//! full.
//!
//! A connection is counted from the moment the filter admits it until the application is done
//! with it ([`Counted`] wraps the proxy application), a failed TLS handshake included: Pingora's
//! listeners are all plain TCP, and TLS is terminated here ([`crate::tls::handshake`]), with
//! the request head deadline bounding the handshake too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::header_deadline::HeaderDeadline;
use crate::metrics::Metrics;
use crate::tls::handshake::Terminator;

/// Live connections against the cap.
#[derive(Debug)]
pub struct ConnectionGate {
    live: AtomicUsize,
    cap: usize,
    freed: Notify,
    metrics: Arc<Metrics>,
}

impl ConnectionGate {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            live: AtomicUsize::new(0),
            cap: cap.max(1),
            freed: Notify::new(),
            metrics,
        })
    }

    /// Takes a slot, waiting (once counted as a pause) while every slot is taken.
    async fn admit(&self) {
        let mut paused = false;
        loop {
            let freed = self.freed.notified();
            let live = self.live.load(Ordering::Acquire);
            if live < self.cap {
                if self
                    .live
                    .compare_exchange(live, live + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.metrics.downstream_connections.inc();
                    return;
                }
                continue;
            }
            if !paused {
                paused = true;
                self.metrics.downstream_accept_pauses.inc();
                tracing::warn!(
                    cap = self.cap,
                    "downstream.max_connections reached: accepting paused until a connection ends"
                );
            }
            freed.await;
        }
    }

    fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.metrics.downstream_connections.dec();
        self.freed.notify_one();
    }
}

/// The filter Pingora's accept loop awaits for every new connection.
#[derive(Debug)]
pub struct GateFilter(pub Arc<ConnectionGate>);

#[async_trait]
impl ConnectionFilter for GateFilter {
    async fn should_accept(&self, _addr: Option<&SocketAddr>) -> bool {
        self.0.admit().await;
        true
    }
}

/// The proxy application, releasing its connection's slot when it is done with it.
pub struct Counted<A> {
    inner: Arc<A>,
    gate: Arc<ConnectionGate>,
    /// Each request head must arrive within this (see [`HeaderDeadline`]).
    header_read_timeout: Duration,
    terminator: Terminator,
}

impl<A> std::fmt::Debug for Counted<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl<A> Counted<A> {
    pub fn new(
        inner: A,
        gate: Arc<ConnectionGate>,
        header_read_timeout: Duration,
        terminator: Terminator,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            gate,
            header_read_timeout,
            terminator,
        }
    }
}

/// Releases a slot however the connection ends (a panic in a task included).
struct Slot<'a>(&'a ConnectionGate);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _slot = Slot(&self.gate);
        let accepted = self.terminator.accept(session).await?;
        // On HTTP/2 the deadline covers the connection preface (its `\r\n\r\n` ends the
        // "head"); Pingora's h2 handshake has no timeout of its own. Frames are not scanned.
        let session: Stream = Box::new(HeaderDeadline::new(
            accepted.stream,
            self.header_read_timeout,
        ));
        let _registration = accepted.registration;
        let mut next = self.inner.process_new(session, shutdown).await;
        // Keep-alive reuse stays inside this connection's slot.
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The connection's limits for this request and the wait for the next one: the keep-alive
/// idle timeout (Pingora's default for HTTP/1.1 is to wait forever), the body read timeout,
/// and pipelining (a second request sent before the first is answered is served in order,
/// not dropped with the connection).
pub fn apply_limits(
    session: &mut pingora::proxy::Session,
    limits: &crate::config::DownstreamLimits,
) {
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
    }
    session.set_read_timeout(Some(limits.body_read_timeout));
    session.set_pipelining_enabled(true);
}
