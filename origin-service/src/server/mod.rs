//! The transport: accepts TCP, terminates TLS (counting handshakes by kind), serves HTTP/1.1 with
//! keep-alive through hyper, and drains connections gracefully on shutdown. Generic over the
//! request handler so a benchmark can put a trivial handler behind the very same transport.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// Per-connection transport settings.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// How long a connection may wait for the next request's headers (idle keep-alive included).
    pub keepalive_idle_timeout: Duration,
    /// After this many requests the response carries `Connection: close`; 0 = unlimited.
    pub max_requests_per_connection: u64,
    pub tls_handshake_timeout: Duration,
    /// How long shutdown waits for in-flight requests before dropping connections.
    pub shutdown_grace: Duration,
}

/// Sends the stop signal to a running `serve` loop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (Self(tx), rx)
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// Resolves once the stop signal has been sent (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: treat it as a stop too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepts connections until `stop` fires, then lets open connections finish their in-flight
/// request (closing idle ones at once) for up to `shutdown_grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    options: ConnOptions,
    metrics: Arc<Metrics>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let options = Arc::new(options);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    connections.spawn(connection(
                        tcp,
                        acceptor.clone(),
                        options.clone(),
                        metrics.clone(),
                        handler.clone(),
                        stop.clone(),
                    ));
                }
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(options.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace period over: dropping open connections"
        );
        connections.shutdown().await;
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.connections.inc();
        metrics.connections_open.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

async fn connection<H, F>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    options: Arc<ConnOptions>,
    metrics: Arc<Metrics>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let _open = OpenConnection::new(metrics.clone());
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%err, "set_nodelay failed");
    }
    let tls = match tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%err, "TLS handshake failed");
            metrics.tls_handshake_failures.inc();
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            metrics.tls_handshake_failures.inc();
            return;
        }
    };
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    metrics.tls_handshakes.with_label_values(&[kind]).inc();

    let served = Arc::new(AtomicU64::new(0));
    let max_requests = options.max_requests_per_connection;
    let service = service_fn(move |request| {
        let handling = handler(request);
        let served = served.clone();
        async move {
            let mut response = handling.await;
            let count = served.fetch_add(1, Ordering::Relaxed) + 1;
            if max_requests > 0 && count >= max_requests {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.keepalive_idle_timeout);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => log_end(result),
        () = stopped(&mut stop) => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            log_end(conn.await);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        if err.is_timeout() {
            tracing::trace!("keep-alive connection idle past its timeout: closed");
        } else {
            tracing::debug!(%err, "connection ended with an error");
        }
    }
}
