//! Client connections on the raw wire: pipelining, a missing Host, transfer codings, repeated
//! lengths, `Expect`, the keep-alive idle timeout and the request cap per connection
//! (`downstream:`); and an upstream's total response deadline.

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

/// Sends `raw` on a new connection; the response head (and what came with it).
async fn answer_to(p: &Proxy, raw: &[u8]) -> String {
    let mut tcp = connect(p).await;
    tcp.write_all(raw).await.unwrap();
    let limit = Duration::from_secs(10);
    read_until(&mut tcp, limit, |t| t.contains("\r\n\r\n"))
        .await
        .0
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
    let text = answer_to(&p, b"GET /no-host HTTP/1.1\r\n\r\n").await;
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

/// An upstream that records each request head and body it receives (raw) and answers `ok`.
async fn start_capture() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut text = String::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    // Heads here carry a 5-byte body, or none for GET.
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let wants_body = head.to_ascii_lowercase().contains("content-length: 5")
                        || head
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked");
                    if wants_body && body.len() < 5 {
                        continue;
                    }
                    record.lock().unwrap().push(text.clone());
                    text.clear();
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

async fn start_with_capture() -> (Proxy, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let (upstream, seen) = start_capture().await;
    let p = Proxy::start(move |dir| {
        proxy_yaml(
            dir,
            &format!("  capture: {{ addresses: [{upstream}] }}"),
            "  - { name: capture, path_prefix: /, upstream: capture }",
        )
    });
    (p, seen)
}

/// Regression: `Transfer-Encoding: gzip, chunked` lost its gzip coding on the way up; an
/// identical duplicate `Content-Length` was forwarded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_codings_are_refused_and_duplicate_lengths_collapse() {
    let (p, seen) = start_with_capture().await;
    let gzip = b"POST /gz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let text = answer_to(&p, gzip).await;
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing may reach the upstream"
    );

    let mut tcp = connect(&p).await;
    tcp.write_all(
        b"POST /twice HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.ends_with("ok")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let forwarded = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        forwarded
            .to_ascii_lowercase()
            .matches("content-length:")
            .count(),
        1,
        "{forwarded}"
    );
    p.stop().await;
}

/// Regression: `Expect: 100-continue` got no `100 Continue`, so the client waited (curl for a
/// second) before sending its body. The proxy now answers it, once the plugins let the request
/// through, and does not forward the met expectation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    let (p, seen) = start_with_capture().await;
    let mut tcp = connect(&p).await;
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let (interim, closed) =
        read_until(&mut tcp, Duration::from_secs(3), |t| t.contains("\r\n\r\n")).await;
    assert!(
        !closed && interim.starts_with("HTTP/1.1 100"),
        "no 100 Continue: {interim:?}"
    );
    tcp.write_all(b"hello").await.unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.ends_with("ok")).await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    let forwarded = seen.lock().unwrap().last().cloned().unwrap();
    assert!(forwarded.ends_with("hello"), "{forwarded}");
    assert!(
        !forwarded.to_ascii_lowercase().contains("expect:"),
        "{forwarded}"
    );
    // An expectation the proxy cannot meet: 417.
    let text = answer_to(
        &p,
        b"GET /odd HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 417"), "{text}");
    p.stop().await;
}

/// Regression: an upstream sending one byte every 2 s kept a request alive for 24 s despite a
/// 3 s read timeout. `response_timeout` bounds the whole response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upstream_is_cut_at_its_response_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
                    .await;
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if tcp.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let p = Proxy::start(move |dir| {
        proxy_yaml(
            dir,
            &format!(
                "  slow: {{ addresses: [{upstream}], read_timeout: 1s, response_timeout: 2s }}"
            ),
            "  - { name: slow, path_prefix: /, upstream: slow }",
        )
    });
    let started = Instant::now();
    let outcome = match p.http.get(p.url("/trickle")).send().await {
        Ok(response) => response.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    assert!(outcome.is_err(), "a 12 s trickle completed: {outcome:?}");
    assert!(took < Duration::from_secs(6), "cut only after {took:?}");
    p.stop().await;
}

/// Regression: connections were never capped (1,000 idle ones cost ~45 MiB). At
/// `max_connections` accepting pauses until one closes; the admin listener stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_accepting_pauses_and_the_admin_stays_reachable() {
    let p = start("downstream: { max_connections: 3 }\n").await;
    let mut open = Vec::new();
    for i in 0..3 {
        let mut tcp = connect(&p).await;
        let path = format!("/held-{i}");
        tcp.write_all(get(&path).as_bytes()).await.unwrap();
        let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.contains(&path)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        open.push(tcp);
    }
    // The fourth connects (kernel backlog) but is not served while three are open.
    let mut fourth = connect(&p).await;
    fourth.write_all(get("/fourth").as_bytes()).await.unwrap();
    let (text, _) = read_until(&mut fourth, Duration::from_millis(800), |t| {
        t.contains("/fourth")
    })
    .await;
    assert!(text.is_empty(), "served beyond the cap: {text}");
    assert_eq!(p.metric("edge_downstream_connections").await, 3.0);
    assert!(p.metric("edge_downstream_accept_pauses_total").await >= 1.0);
    // One closes: the fourth is accepted and answered.
    drop(open.pop());
    let (text, _) = read_until(&mut fourth, Duration::from_secs(10), |t| {
        t.contains("/fourth")
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(open);
    drop(fourth);
    p.stop().await;
}

/// Regression: a head sent one byte at a time was timed per read only, so it held the
/// connection for as long as it trickled. The whole head now has `header_read_timeout`; bodies
/// (after a `100 Continue` too) and idle time between requests are not head time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_header_read_timeout_bodies_are_not() {
    let (upstream, _seen) = start_capture().await;
    let p = Proxy::start(move |dir| {
        proxy_yaml(
            dir,
            &format!("  capture: {{ addresses: [{upstream}] }}"),
            "  - { name: capture, path_prefix: /, upstream: capture }",
        ) + "downstream: { header_read_timeout: 1s }\n"
    });
    // Slowloris: a byte every 250 ms, never a blank line.
    let mut tcp = connect(&p).await;
    let started = Instant::now();
    tcp.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tcp.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe)).await
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a trickled head held the connection for {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A head in three pieces inside the limit, then a body trickled for 1.5 s after a 100.
    let mut tcp = connect(&p).await;
    for piece in [
        "POST /up HTTP/1.1\r\n",
        "Host: a\r\nContent-Length: 5\r\n",
        "Expect: 100-continue\r\n\r\n",
    ] {
        tcp.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (interim, _) =
        read_until(&mut tcp, Duration::from_secs(3), |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    for byte in b"hello" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(&[*byte]).await.unwrap();
    }
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.ends_with("ok")).await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    // Idle between requests is not head time: a request, 1.5 s idle, then a prompt head on
    // the same connection is served.
    let mut tcp = connect(&p).await;
    tcp.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.ends_with("ok")).await;
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("keep-alive"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tcp.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until(&mut tcp, Duration::from_secs(10), |t| t.ends_with("ok")).await;
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    p.stop().await;
}
