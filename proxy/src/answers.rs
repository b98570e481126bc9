//! The answers the proxy writes itself rather than proxying: a plugin's local response (after
//! the response callbacks of the plugins before it, as Envoy runs them), the answer for a
//! failure (written only if no response head went out yet, then the connection closes), and
//! the proxy's own JSON errors.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorType, Result};

use crate::ctx::RequestCtx;
use crate::errors;
use crate::framing;
use crate::plugin::state::LocalResponse;

/// The response header of a local response; header pairs that are not valid HTTP are dropped.
pub fn local_header(local: &LocalResponse, request_id: &str) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(local.status, Some(local.headers.len() + 2))?;
    for (name, value) in &local.headers {
        if header
            .append_header(name.clone(), value.as_slice())
            .is_err()
        {
            tracing::warn!(header = %name, "invalid header in a plugin's local response dropped");
        }
    }
    header.insert_header(http::header::CONTENT_LENGTH, local.body.len().to_string())?;
    header.insert_header("x-request-id", request_id)?;
    Ok(header)
}

/// A local response as it goes out: through the response callbacks of the plugins before the
/// one that answered, framed by the body they leave.
async fn local_answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    local: LocalResponse,
) -> Result<(ResponseHeader, Bytes)> {
    let mut header = local_header(&local, &ctx.request_id)?;
    let body = Bytes::from(local.body);
    let Some(chain) = ctx.chain.as_mut() else {
        return Ok((header, body));
    };
    let plugins = &ctx.generation.plugins;
    let answered = chain
        .local_answer(
            &plugins.host.plugins,
            session.req_header_mut(),
            &mut header,
            body,
            &plugins.callouts,
        )
        .await;
    let body = match answered {
        Ok(body) => body,
        Err(replacement) => {
            header = local_header(&replacement, &ctx.request_id)?;
            Bytes::from(replacement.body)
        }
    };
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    Ok((header, body))
}

/// Sends a plugin's local response from a request phase (nothing was proxied).
pub async fn send_local(
    session: &mut Session,
    ctx: &mut RequestCtx,
    local: LocalResponse,
) -> Result<()> {
    let (header, body) = local_answer(session, ctx, local).await?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Sends the answer of a plugin that ended the request in a body phase (its local response,
/// or the host's answer for its failure), if the response head has not gone out yet.
pub async fn send_plugin_failure(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: LocalResponse,
) -> FailToProxy {
    let status = answer.status;
    let built = if session.response_written().is_none() {
        local_answer(session, ctx, answer).await
    } else {
        local_header(&answer, &ctx.request_id).map(|h| (h, Bytes::from(answer.body)))
    };
    send_failure(session, status, built).await
}

/// Sends an error answer and closes the connection after it. Pingora writes it only if no
/// final response head went out yet; otherwise the connection just closes, leaving the body
/// unterminated, so the client sees an error rather than a complete-looking response.
pub async fn send_failure(
    session: &mut Session,
    status: u16,
    answer: Result<(ResponseHeader, Bytes)>,
) -> FailToProxy {
    let sent = match answer {
        Ok((header, body)) => {
            session
                .as_downstream_mut()
                .write_error_response(header, body)
                .await
        }
        Err(_) => session.respond_error(status).await,
    };
    if let Err(err) = sent {
        tracing::debug!(%err, "could not send the error response");
    }
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}

/// One of the proxy's own JSON errors, as the whole response.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
) -> Result<()> {
    let (header, body) = errors::json_error(status, code, message)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// A body phase's plugin failure (or local response, or a body held beyond a plugin's limit)
/// ends the request: `fail_to_proxy` sends `answer` if the response head has not gone out
/// yet, and otherwise the connection is closed with the body unterminated, so the client sees
/// an error rather than a complete-looking truncated response.
pub fn end_in_body_phase<T>(ctx: &mut RequestCtx, answer: LocalResponse) -> Result<T> {
    let status = answer.status;
    let details = answer.details.clone();
    ctx.plugin_failure = Some(answer);
    Error::e_explain(ErrorType::HTTPStatus(status), details)
}

/// `Expect: 100-continue`: the request passed the plugins (a refusal went out instead of a
/// 100, so the client never sent its body for nothing): the proxy answers `100 Continue`
/// itself and the expectation, met, is not forwarded.
pub async fn continue_if_expected(session: &mut Session) -> Result<()> {
    if framing::expectation(session.req_header()) != framing::Expectation::Continue {
        return Ok(());
    }
    session
        .req_header_mut()
        .remove_header(&http::header::EXPECT);
    let interim = ResponseHeader::build(100, Some(0))?;
    session
        .as_downstream_mut()
        .write_response_header(Box::new(interim))
        .await
}
