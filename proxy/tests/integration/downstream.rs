//! Client connections on the raw wire: pipelining, a missing Host, the keep-alive idle timeout
//! and the request cap per connection (`downstream:`).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{proxy_yaml, start_echo, Proxy};

async fn start(downstream: &str) -> Proxy {
    let echo = start_echo().await;
    let downstream = downstream.to_string();
    Proxy::start(move |dir| {
        proxy_yaml(
            dir,
            &format!("  echo: {{ addresses: [{echo}] }}"),
            "  - { name: echo, path_prefix: /, upstream: echo }",
        ) + &downstream
    })
}

async fn connect(p: &Proxy) -> TcpStream {
    TcpStream::connect(p.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until `done` says the text is complete, the peer closes, or `limit` passes; the text
/// and whether the peer closed.
async fn read_until(
    tcp: &mut TcpStream,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    let started = Instant::now();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !done(&text) {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (text, true),
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => break,
        }
    }
    (text, false)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n")
}

/// Regression: two GETs in one write got one response and a close; the second was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let p = start("").await;
    let mut tcp = connect(&p).await;
    let both = format!("{}{}", get("/first"), get("/second"));
    tcp.write_all(both.as_bytes()).await.unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| {
        t.contains("\"path\":\"/second\"")
    })
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let (first, second) = (
        text.find("\"path\":\"/first\"").unwrap(),
        text.find("\"path\":\"/second\"").unwrap(),
    );
    assert!(first < second, "answered out of order: {text}");
    p.stop().await;
}

/// Regression: an HTTP/1.1 request without Host was forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_400() {
    let p = start("").await;
    let mut tcp = connect(&p).await;
    tcp.write_all(b"GET /no-host HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| {
        t.contains("\r\n\r\n")
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    p.stop().await;
}

/// Regression: idle keep-alive connections were held forever (Pingora waits without a timeout
/// between HTTP/1.1 requests by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_after_the_timeout() {
    let p = start("downstream: { keepalive_timeout: 1s }\n").await;
    let mut tcp = connect(&p).await;
    tcp.write_all(get("/once").as_bytes()).await.unwrap();
    let (text, closed) = read_until(&mut tcp, Duration::from_secs(10), |t| {
        t.contains("\"path\":\"/once\"")
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200") && !closed, "{text}");
    let idle = Instant::now();
    let (_, closed) = read_until(&mut tcp, Duration::from_secs(5), |_| false).await;
    assert!(closed, "still open after {:?} idle", idle.elapsed());
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "{:?}",
        idle.elapsed()
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_at_most_max_requests_per_connection() {
    let p = start("downstream: { max_requests_per_connection: 3 }\n").await;
    let mut tcp = connect(&p).await;
    let mut closed = false;
    for i in 0..3 {
        let path = format!("/req-{i}");
        tcp.write_all(get(&path).as_bytes()).await.unwrap();
        let marker = format!("\"path\":\"{path}\"");
        let (text, peer_closed) =
            read_until(&mut tcp, Duration::from_secs(10), |t| t.contains(&marker)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text}");
        closed = peer_closed;
    }
    if !closed {
        let (_, peer_closed) = read_until(&mut tcp, Duration::from_secs(5), |_| false).await;
        closed = peer_closed;
    }
    assert!(closed, "the connection stays open after 3 requests");
    // A fresh connection is served again.
    let mut tcp = connect(&p).await;
    tcp.write_all(get("/again").as_bytes()).await.unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.contains("/again")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    p.stop().await;
}
