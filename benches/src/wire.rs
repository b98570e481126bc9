//! The load generator's measured request loop: one keep-alive HTTP/1.1 connection (plain or TLS)
//! that writes a GET serialized once and reads one response on the caller's task. No connection
//! task, no channel, no per-request header map: the client spends as little CPU as it can, so on
//! a shared 2-core machine the measured server gets the cycles (as wrk does).

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A byte stream the client can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Response headers the parser accepts.
const MAX_HEADERS: usize = 64;

/// What one response was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body_len: usize,
    /// The server said `Connection: close`: reconnect before the next request.
    pub closing: bool,
    /// An `X-Cache` header whose value starts with `HIT` (edge-proxy, and the peers' configs).
    pub cache_hit: bool,
}

/// One keep-alive connection.
pub struct Connection {
    stream: Box<dyn Io>,
    request: Bytes,
    buffer: BytesMut,
}

/// `GET path HTTP/1.1` with a `Host` header and `headers`, serialized.
pub fn get_request(host: &str, path_and_query: &str, headers: &[(String, String)]) -> Vec<u8> {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    format!("GET {path_and_query} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").into_bytes()
}

struct Head {
    len: usize,
    status: u16,
    content_length: usize,
    closing: bool,
    cache_hit: bool,
}

/// Parses a complete response head at the start of `bytes`; `None` when more bytes are needed.
fn parse_head(bytes: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = response.parse(bytes)? else {
        return Ok(None);
    };
    let status = response.code.context("response without status")?;
    let (mut content_length, mut closing, mut cache_hit) = (None, false, false);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            anyhow::bail!("the load client needs content-length, got transfer-encoding");
        } else if header.name.eq_ignore_ascii_case("connection") {
            closing = header.value.eq_ignore_ascii_case(b"close");
        } else if header.name.eq_ignore_ascii_case("x-cache") {
            cache_hit = header.value.starts_with(b"HIT");
        }
    }
    let content_length = match (content_length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => anyhow::bail!("response {status} without content-length"),
    };
    Ok(Some(Head {
        len,
        status,
        content_length,
        closing,
        cache_hit,
    }))
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(stream: Box<dyn Io>, request: impl Into<Bytes>) -> Self {
        Self {
            stream,
            request: request.into(),
            buffer: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The request the next round trips send (a varying workload).
    pub fn set_request(&mut self, request: impl Into<Bytes>) {
        self.request = request.into();
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buffer.capacity() - self.buffer.len() < 4096 {
            self.buffer.reserve(16 * 1024);
        }
        let read = self.stream.read_buf(&mut self.buffer).await?;
        anyhow::ensure!(read > 0, "connection closed by the server");
        Ok(())
    }

    /// Sends the request and reads its whole response.
    pub async fn roundtrip(&mut self) -> anyhow::Result<Response> {
        self.stream.write_all(&self.request).await?;
        self.stream.flush().await?;
        let head = loop {
            if let Some(head) = parse_head(&self.buffer)? {
                break head;
            }
            self.fill().await?;
        };
        let total = head.len + head.content_length;
        while self.buffer.len() < total {
            self.fill().await?;
        }
        self.buffer.advance(total);
        Ok(Response {
            status: head.status,
            body_len: head.content_length,
            closing: head.closing,
            cache_hit: head.cache_hit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads_and_asks_for_more_bytes() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let head = parse_head(full).unwrap().unwrap();
        assert_eq!(
            (
                head.len,
                head.status,
                head.content_length,
                head.closing,
                head.cache_hit
            ),
            (full.len() - 5, 200, 5, true, false)
        );
        let hit = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nX-Cache: HIT\r\n\r\n");
        assert!(hit.unwrap().unwrap().cache_hit);
        assert!(parse_head(&full[..20]).unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        let not_modified = parse_head(b"HTTP/1.1 304 Not Modified\r\n\r\n").unwrap();
        assert_eq!(not_modified.unwrap().content_length, 0);
    }

    #[tokio::test]
    async fn reads_back_to_back_responses_on_one_connection() {
        let (client, mut server) = tokio::io::duplex(64);
        let request = get_request("h", "/x", &[]);
        let expected = request.clone();
        let served = tokio::spawn(async move {
            for body in ["first", "second-body"] {
                let mut got = vec![0; expected.len()];
                server.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expected);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                server.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let mut connection = Connection::new(Box::new(client), request);
        assert_eq!(connection.roundtrip().await.unwrap().body_len, 5);
        assert_eq!(connection.roundtrip().await.unwrap().body_len, 11);
        served.await.unwrap();
        assert!(connection.roundtrip().await.is_err());
    }
}
