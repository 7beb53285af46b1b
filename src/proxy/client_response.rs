//! `response_filter`, `response_body_filter`: the client's response — headers, the body
//! passed through piece by piece while it is metered, the total deadline, and the truncation
//! tail when the upstream fails mid-stream.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::metering::{BodyAction, MeterConfig, ResponseMeter, StreamProtocol};
use crate::routing::response_model::{Framing, ModelRewriter};
use crate::routing::{Endpoint, Protocol};

/// Upstream error bodies are small; anything beyond this is cut before normalising.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub fn on_response_header(
    response: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    version: http::Version,
) -> Result<()> {
    let http11 = version == http::Version::HTTP_11;
    let status = response.status.as_u16();
    ctx.reply.upstream_status = Some(status);
    ctx.ids().apply(response)?;
    // A replica's 429/503 (every retry spent) tells SDKs when to come back; vLLM sends none.
    if matches!(status, 429 | 503) && !response.headers.contains_key(http::header::RETRY_AFTER) {
        let secs = crate::errors::RETRY_AFTER_SECONDS;
        response.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
        response.insert_header("retry-after-ms", (secs * 1000).to_string())?;
    }
    if let Some(reservation) = ctx.admission.reservation.as_ref() {
        for (name, value) in reservation.headers().pairs() {
            response.insert_header(name, value)?;
        }
    }
    for name in &ctx.admission.rules.remove_response_headers {
        response.remove_header(name);
    }
    for (name, value) in &ctx.admission.rules.set_response_headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    let sent_at = ctx.attempt.upstream_sent_at.unwrap_or(ctx.started);
    let body_changes = choose_meter(response, ctx, status, sent_at)?;
    // An Ollama call's reply is translated (NDJSON or one JSON object): never its length.
    let translated = status < 400 && super::ollama::start_reply(response, ctx)?;
    let body_changes = body_changes || translated;
    if body_changes {
        response.remove_header(&http::header::CONTENT_LENGTH);
        if http11 {
            response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    if version < http::Version::HTTP_11 {
        // HTTP/1.0 cannot read chunked encoding: the body ends when the connection closes.
        response.remove_header(&http::header::TRANSFER_ENCODING);
        response.insert_header(http::header::CONNECTION, "close")?;
    }
    Ok(())
}

/// The meter for the body (by protocol, endpoint and content type); `true` when the body's
/// length may change on the way (error bodies are normalised, streams may get events).
fn choose_meter(
    response: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    status: u16,
    sent_at: Instant,
) -> Result<bool> {
    let anthropic = ctx.protocol() == Protocol::Anthropic;
    let responses = ctx.endpoint == Some(Endpoint::Responses);
    // A stored response read back (or deleted) is not new usage: passed through unmetered.
    let stored = ctx.endpoint.is_some_and(Endpoint::is_stored_response);
    ctx.reply.model_rewrite = None;
    Ok(if status >= 400 {
        // The replica's error shape differs by server; the client gets its protocol's.
        ctx.reply.error_body = Some(BytesMut::new());
        response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        true
    } else if is_event_stream(response) && !stored {
        let mut config = if anthropic {
            MeterConfig::messages_sse()
        } else if responses || stored {
            MeterConfig::responses_sse()
        } else {
            MeterConfig::sse(StreamProtocol::OpenAi, ctx.admission.strip_usage)
        };
        config.prompt_tokens_hint = estimate_prompt_tokens(ctx.admission.prompt_bytes);
        ctx.reply.meter = Some(ResponseMeter::new(config, sent_at));
        ctx.reply.model_rewrite = model_rewriter(ctx, Framing::Sse);
        // Events may be removed (usage chunk), rewritten (error events) or appended
        // (truncation), so the length is not known up front.
        true
    } else {
        let config = if anthropic {
            MeterConfig::messages_json(status)
        } else if responses {
            MeterConfig::responses_json(status)
        } else {
            MeterConfig::json(status)
        };
        if !stored {
            ctx.reply.meter = Some(ResponseMeter::new(config, sent_at));
        }
        ctx.reply.model_rewrite = model_rewriter(ctx, Framing::Json);
        // The alias may differ in length from the served name: the length is dropped (a
        // chunked HTTP/1.1 body, an h2 body ended by its last frame).
        ctx.reply.model_rewrite.is_some()
    })
}

fn model_rewriter(ctx: &RequestCtx, framing: Framing) -> Option<ModelRewriter> {
    let route = ctx.admission.route.as_ref()?;
    crate::routing::response_model_rewriter(route, ctx.endpoint?, framing)
}

fn is_event_stream(response: &ResponseHeader) -> bool {
    response
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Prompt tokens when the replica reports none (a cut stream): ~4 bytes per token.
fn estimate_prompt_tokens(prompt_bytes: usize) -> u64 {
    crate::estimate::tokens_for(prompt_bytes as u64)
}

/// The cluster's `timeouts.total_ms` ran out while the response was still coming: end it.
/// Checked as pieces arrive, so a silent replica is bounded by `read_ms` instead.
pub fn check_total_deadline(ctx: &mut RequestCtx, end_of_stream: bool) -> Result<()> {
    let Some(total) = ctx
        .admission
        .route
        .as_ref()
        .and_then(|r| r.cluster.timeouts.total)
    else {
        return Ok(());
    };
    if !end_of_stream && ctx.started.elapsed() > total {
        return Err(Error::explain(
            ErrorType::ReadTimedout,
            "the cluster's total response time (timeouts.total_ms) ran out",
        )
        .into_up());
    }
    Ok(())
}

pub fn on_response_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    let protocol = ctx.protocol();
    if let Some(buf) = ctx.reply.error_body.as_mut() {
        if let Some(piece) = body.as_ref() {
            let room = MAX_ERROR_BODY.saturating_sub(buf.len());
            buf.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        *body = if end_of_stream {
            let status = ctx.reply.upstream_status.unwrap_or(502);
            Some(match protocol {
                Protocol::OpenAi => crate::upstream_error::normalize_error_body(status, buf),
                Protocol::Anthropic => {
                    crate::upstream_error::anthropic::normalize_anthropic_error_body(status, buf)
                }
                Protocol::Ollama => crate::ollama::error_body_from_openai(
                    status,
                    &crate::upstream_error::normalize_error_body(status, buf),
                ),
            })
        } else {
            Some(Bytes::new())
        };
    } else if let Some(meter) = ctx.reply.meter.as_mut() {
        let now = Instant::now();
        if let Some(piece) = body.as_ref() {
            if let BodyAction::Replace(replacement) = meter.on_body(piece, now) {
                *body = Some(replacement);
            }
        }
        // The replica's line of new requests moved (see `InFlight::first_token`).
        if meter.first_token_seen() || end_of_stream {
            if let Some(slot) = ctx.attempt.in_flight.as_mut() {
                slot.first_token(now);
            }
        }
        // The meter saw the replica's bytes; the client gets the alias in `model`.
        if let Some(rewriter) = ctx.reply.model_rewrite.as_mut() {
            if let Some(rewritten) = body.as_deref().and_then(|piece| rewriter.rewrite(piece)) {
                *body = Some(rewritten);
            }
        }
        if end_of_stream {
            let held = ctx
                .reply
                .model_rewrite
                .as_mut()
                .and_then(ModelRewriter::finish);
            let tail = meter.on_end(now);
            append(body, held);
            append(body, tail);
        }
    }
    super::ollama::translate_body(ctx, body, end_of_stream);
    if let Some(piece) = body.as_ref() {
        ctx.reply.response_bytes += piece.len();
    }
}

/// `extra` after `body`'s piece (if any).
fn append(body: &mut Option<Bytes>, extra: Option<Bytes>) {
    let Some(extra) = extra else { return };
    *body = Some(match body.take() {
        Some(piece) if !piece.is_empty() => {
            let mut joined = BytesMut::with_capacity(piece.len() + extra.len());
            joined.extend_from_slice(&piece);
            joined.extend_from_slice(&extra);
            joined.freeze()
        }
        _ => extra,
    });
}

/// The upstream failed after the response started (connection cut): what the client still
/// needs to see the stream end as a failure — a `model` value still held, then the
/// truncation error event.
pub fn tail_after_upstream_failure(ctx: &mut RequestCtx) -> Option<Bytes> {
    let mut out = ctx
        .reply
        .model_rewrite
        .as_mut()
        .and_then(ModelRewriter::finish);
    let tail = ctx
        .reply
        .meter
        .as_mut()
        .and_then(|m| m.on_end(Instant::now()));
    append(&mut out, tail);
    let out = match ctx.reply.ollama.as_mut() {
        Some(translation) => super::ollama::translate_end(translation, out),
        None => out?,
    };
    ctx.reply.response_bytes += out.len();
    Some(out)
}
