//! How upstream failures are named (metrics `kind`) and answered (JSON bodies with a status and
//! a message naming the upstream), so a client and an operator both see what went wrong.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};

/// A short, stable name for an upstream failure (metrics label and error `code`).
pub fn upstream_kind(error: &Error) -> &'static str {
    match error.etype() {
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::ConnectRefused => "connect_refused",
        ErrorType::ConnectNoRoute => "connect_no_route",
        ErrorType::TLSHandshakeFailure | ErrorType::HandshakeError => "tls_handshake",
        ErrorType::TLSHandshakeTimedout => "tls_handshake_timeout",
        ErrorType::InvalidCert => "tls_invalid_cert",
        ErrorType::ConnectError | ErrorType::SocketError | ErrorType::BindError => "connect_error",
        ErrorType::ReadTimedout => "read_timeout",
        ErrorType::WriteTimedout => "write_timeout",
        ErrorType::ReadError => "read_error",
        ErrorType::WriteError => "write_error",
        ErrorType::ConnectionClosed => "connection_closed",
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => "bad_response",
        _ => "other",
    }
}

/// Whether the error came from the upstream side (and so counts as an upstream error).
pub fn is_upstream(error: &Error) -> bool {
    matches!(error.esource(), ErrorSource::Upstream)
}

/// The status a client gets for a failed proxy attempt: 504 for timeouts, else 502; errors that
/// are not the upstream's keep Pingora's mapping (400 for bad requests, 500 for internal ones).
pub fn status_for(error: &Error) -> u16 {
    match error.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
            if is_upstream(error) =>
        {
            504
        }
        _ => match error.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => 400,
            _ => 500,
        },
    }
}

/// The body of every error the proxy answers itself:
/// `{"error":{"status":502,"code":"connect_refused","message":"..."}}`.
pub fn json_body(status: u16, code: &str, message: &str) -> String {
    serde_json::json!({
        "error": { "status": status, "code": code, "message": message }
    })
    .to_string()
}

/// A JSON error response ([`json_body`], `cache-control: no-store`).
pub fn json_error(
    status: u16,
    code: &str,
    message: &str,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(json_body(status, code, message));
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("content-length", body.len().to_string())?;
    Ok((header, body))
}
