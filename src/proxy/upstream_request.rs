//! `upstream_request_filter`, `request_body_filter`: what each attempt sends the replica —
//! its headers and the rewritten body.

use std::time::Instant;

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use crate::client_request_id::PASSED_ON_HEADER;

pub fn prepare_request(request: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    if let Some(replica) = ctx.attempt.replica.as_deref() {
        request.insert_header(http::header::HOST, replica)?;
    }
    // Never forward the client's credentials to a replica.
    request.remove_header(&http::header::AUTHORIZATION);
    request.remove_header("x-api-key");
    request.remove_header(&http::header::EXPECT);
    request.remove_header(&http::header::TRANSFER_ENCODING);
    request.remove_header(&http::header::ACCEPT_ENCODING);
    // Completions are plain request/response: a protocol switch (WebSocket, h2c) asked of a
    // replica could only confuse it or a proxy between us.
    request.remove_header(&http::header::UPGRADE);
    request.remove_header("http2-settings");
    let asks_upgrade = request
        .headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    if asks_upgrade {
        request.remove_header(&http::header::CONNECTION);
    }
    // A translated call (Ollama's) goes to the replica's OpenAI route.
    if let Some(call) = ctx.admission.ollama.as_ref() {
        request.set_uri(http::Uri::from_static(call.upstream.path()));
    }
    if let Some(body) = ctx.admission.upstream_body.as_ref() {
        request.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        request.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    request.insert_header("x-request-id", ctx.attempt_request_id())?;
    // Only the sanitised id of the client's own passes on, never a header it set itself.
    request.remove_header(PASSED_ON_HEADER);
    if let Some(id) = ctx.client_request_id.as_deref() {
        request.insert_header(PASSED_ON_HEADER, id)?;
    }
    for name in &ctx.admission.rules.remove_request_headers {
        request.remove_header(name);
    }
    for (name, value) in &ctx.admission.rules.set_request_headers {
        request.insert_header(name.clone(), value.clone())?;
    }
    ctx.attempt.upstream_sent_at = Some(Instant::now());
    Ok(())
}

/// Pingora replays what it holds of the client body (or our wrapper's copy); we send the
/// rewritten body instead. Never `None` mid-body: that would mean end of body.
pub fn substitute_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &RequestCtx) {
    if let Some(rewritten) = ctx.admission.upstream_body.as_ref() {
        *body = Some(if end_of_stream {
            rewritten.clone()
        } else {
            Bytes::new()
        });
    }
}
