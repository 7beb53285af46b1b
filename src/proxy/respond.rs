//! The one place the proxy writes a response of its own: a JSON body with an explicit length.

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::ResponseIds;
use crate::errors::ApiError;
use crate::routing::Protocol;

/// Write a complete JSON response. `close` drops client keep-alive (used when the request body
/// was not fully read, so the connection cannot be reused safely).
pub async fn write_json(
    session: &mut Session,
    status: u16,
    extra_headers: &[(&'static str, String)],
    body: Bytes,
    ids: ResponseIds<'_>,
    close: bool,
) -> Result<()> {
    if close {
        session.set_keepalive(None);
    }
    let mut header = ResponseHeader::build(status, Some(6))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    ids.apply(&mut header)?;
    if close {
        header.insert_header("connection", "close")?;
    }
    for (name, value) in extra_headers {
        header.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write an error in the shape of the client's protocol (OpenAI's, or Anthropic's on the
/// Messages endpoints).
pub async fn write_error(
    session: &mut Session,
    error: &ApiError,
    protocol: Protocol,
    ids: ResponseIds<'_>,
    close: bool,
) -> Result<()> {
    let body = match protocol {
        Protocol::OpenAi => error.to_json(),
        Protocol::Anthropic => error.to_anthropic_json(),
        Protocol::Ollama => error.to_ollama_json(),
    };
    write_json(
        session,
        error.status(),
        &error.extra_headers(),
        body,
        ids,
        close,
    )
    .await
}
