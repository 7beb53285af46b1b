//! `response_filter`, `response_body_filter`: the client's response — headers, the body
//! passed through piece by piece while it is metered, the total deadline, and the truncation
//! tail when the upstream fails mid-stream.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::metering::{BodyAction, MeterConfig, ResponseMeter, StreamProtocol};
use crate::routing::Protocol;

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
    let anthropic = ctx.protocol() == Protocol::Anthropic;
    let body_changes = if status >= 400 {
        // The replica's error shape differs by server; the client gets its protocol's.
        ctx.reply.error_body = Some(BytesMut::new());
        response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        true
    } else if is_event_stream(response) {
        let mut config = if anthropic {
            MeterConfig::messages_sse()
        } else {
            MeterConfig::sse(StreamProtocol::OpenAi, ctx.admission.strip_usage)
        };
        config.prompt_tokens_hint = estimate_prompt_tokens(ctx.admission.prompt_bytes);
        ctx.reply.meter = Some(ResponseMeter::new(config, sent_at));
        // Events may be removed (usage chunk), rewritten (error events) or appended
        // (truncation), so the length is not known up front.
        true
    } else {
        let config = if anthropic {
            MeterConfig::messages_json(status)
        } else {
            MeterConfig::json(status)
        };
        ctx.reply.meter = Some(ResponseMeter::new(config, sent_at));
        false
    };
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
        if end_of_stream {
            if let Some(tail) = meter.on_end(now) {
                *body = Some(match body.take() {
                    Some(piece) if !piece.is_empty() => {
                        let mut joined = BytesMut::with_capacity(piece.len() + tail.len());
                        joined.extend_from_slice(&piece);
                        joined.extend_from_slice(&tail);
                        joined.freeze()
                    }
                    _ => tail,
                });
            }
        }
    }
    if let Some(piece) = body.as_ref() {
        ctx.reply.response_bytes += piece.len();
    }
}

/// The upstream failed after the response started (connection cut): what the client still
/// needs to see the stream end as a failure — the truncation error event.
pub fn tail_after_upstream_failure(ctx: &mut RequestCtx) -> Option<Bytes> {
    let tail = ctx.reply.meter.as_mut()?.on_end(Instant::now())?;
    ctx.reply.response_bytes += tail.len();
    Some(tail)
}
