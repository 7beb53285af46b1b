//! The upstream side of one request: which replica, what it is sent, and how its answer is
//! passed back.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use crate::fleet::{Outcome, SelectCtx, SelectError};
use crate::metering::{BodyAction, MeterConfig, ResponseMeter, StreamProtocol};

/// Upstream error bodies are small; anything beyond this is cut before normalising.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub fn choose_peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some(route) = ctx.route.as_ref() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "upstream_peer without a route",
        ));
    };
    let cluster = route.cluster.clone();
    let snapshot = ctx.config.clone();
    let Some(runtime) = snapshot.runtime(&cluster.name) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "cluster missing from the snapshot",
        ));
    };
    // The previous attempt's slot is released before choosing again.
    ctx.in_flight = None;
    let now = Instant::now();
    let select = SelectCtx {
        tried: &ctx.tried,
        last: ctx.replica_index,
        prefix_key: ctx.prefix_key,
        now,
        rand: fastrand::u64(..),
    };
    let index = match runtime.balancer.select(&runtime.replicas, &select) {
        Ok(index) => index,
        Err(e) => {
            let model = route.alias.clone();
            let (error, status) = match e {
                SelectError::NoReplicas | SelectError::NoEligible { .. } => (
                    ApiError::NoReplicaAvailable {
                        model,
                        cluster: cluster.name.clone(),
                    },
                    503,
                ),
                SelectError::Saturated { retry_after } => (
                    ApiError::Overloaded {
                        model,
                        cluster: cluster.name.clone(),
                        retry_after_secs: retry_after.as_secs().clamp(1, 60),
                    },
                    503,
                ),
                SelectError::Exhausted => (
                    ApiError::UpstreamUnreachable {
                        model,
                        detail: format!("all {} tried replicas failed", ctx.tried.len()),
                    },
                    502,
                ),
            };
            ctx.failure = Some(error);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no replica chosen",
            ));
        }
    };
    let state = &runtime.replicas[index];
    let replica = &cluster.replicas[index];
    ctx.in_flight = Some(state.begin());
    ctx.replica_index = Some(index);
    ctx.tried.push(index);
    ctx.attempts += 1;
    ctx.replica = Some(replica.authority.clone());

    let server = &ctx.config.server;
    let mut peer = HttpPeer::new(replica.addr, false, String::new());
    peer.options.connection_timeout = Some(cluster.timeouts.connect);
    peer.options.total_connection_timeout = Some(cluster.timeouts.connect);
    peer.options.read_timeout = Some(cluster.timeouts.read);
    peer.options.write_timeout = Some(server.write_timeout);
    peer.options.idle_timeout = Some(server.upstream_idle_timeout);
    Ok(Box::new(peer))
}

/// The current attempt's replica state.
fn current_replica(ctx: &RequestCtx) -> Option<&std::sync::Arc<crate::fleet::ReplicaState>> {
    ctx.in_flight.as_ref().map(|slot| slot.replica())
}

fn report(ctx: &RequestCtx, outcome: Outcome) {
    if let Some(replica) = current_replica(ctx) {
        if let Some(transition) = replica.on_request_outcome(outcome, Instant::now()) {
            log::warn!(
                "replica {}: {transition:?} after {outcome:?}",
                replica.id().as_str()
            );
        }
    }
}

/// Attempts left, and a replica that could take one.
fn can_retry(ctx: &RequestCtx) -> bool {
    if ctx.attempts > ctx.config.server.connect_retries {
        return false;
    }
    let Some(route) = ctx.route.as_ref() else {
        return false;
    };
    let now = Instant::now();
    ctx.config.runtime(&route.cluster.name).is_some_and(|rt| {
        rt.replicas
            .iter()
            .enumerate()
            .any(|(i, r)| !ctx.tried.contains(&i) && r.is_eligible(now))
    })
}

/// A refused or timed-out connect: nothing reached the replica, so another one may be tried.
pub fn on_connect_failure(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let outcome = match e.etype() {
        _ if local_resource_error(&e) => Outcome::Neutral,
        ErrorType::ConnectTimedout => Outcome::Timeout,
        _ => Outcome::ConnectFailed,
    };
    report(ctx, outcome);
    e.set_retry(can_retry(ctx));
    e
}

/// The connect failed for lack of a local resource (fds, ports, memory): not the replica's
/// fault.
fn local_resource_error(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.root_cause());
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return crate::fleet::health::is_local_resource_error(io);
        }
        cause = c.source();
    }
    false
}

/// A failure after connecting. A POST may already be generating on a GPU, so it is replayed
/// only where the replica cannot have acted on it: a pooled connection the replica had closed
/// (idle keep-alive race) failing before any response byte, or a replica that answered
/// 502/503/empty 500 before anything reached the client.
pub fn on_proxy_error(
    peer: &HttpPeer,
    ctx: &mut RequestCtx,
    e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("replica {peer}"));
    if ctx.retry_status {
        ctx.retry_status = false;
        e.set_retry(can_retry(ctx));
        return e;
    }
    let stale_pool = client_reused
        && ctx.upstream_status.is_none()
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
        );
    if stale_pool && ctx.attempts <= ctx.config.server.connect_retries {
        // A fresh connection to the same replica is fine here; allow it again.
        ctx.tried.pop();
        ctx.replica_index = None;
        e.set_retry(true);
        return e;
    }
    let outcome = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout if ctx.upstream_status.is_none() => {
            Outcome::Timeout
        }
        _ if e.esource() == &pingora_core::ErrorSource::Upstream => Outcome::StreamBroken,
        _ => Outcome::Neutral,
    };
    report(ctx, outcome);
    e.set_retry(false);
    e
}

pub fn prepare_request(request: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    if let Some(replica) = ctx.replica.as_deref() {
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
    if let Some(body) = ctx.upstream_body.as_ref() {
        request.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        request.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    request.insert_header("x-request-id", ctx.attempt_request_id())?;
    for name in &ctx.remove_request_headers {
        request.remove_header(name);
    }
    for (name, value) in &ctx.set_request_headers {
        request.insert_header(name.clone(), value.clone())?;
    }
    ctx.upstream_sent_at = Some(Instant::now());
    Ok(())
}

/// Pingora replays what it holds of the client body (or our wrapper's copy); we send the
/// rewritten body instead. Never `None` mid-body: that would mean end of body.
pub fn substitute_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &RequestCtx) {
    if let Some(rewritten) = ctx.upstream_body.as_ref() {
        *body = Some(if end_of_stream {
            rewritten.clone()
        } else {
            Bytes::new()
        });
    }
}

/// Before anything reaches the client. An error answer with an empty body ends the response
/// with its header, leaving no body piece to put the OpenAI-shaped error into; so it becomes
/// our own error (same status) through `fail_to_proxy`.
pub fn on_upstream_response_header(response: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let status = response.status.as_u16();
    ctx.upstream_status = Some(status);
    if let (Some(replica), Some(sent)) = (current_replica(ctx), ctx.upstream_sent_at) {
        replica.record_latency(sent.elapsed());
    }
    report(ctx, Outcome::from_status(status));
    let empty = response
        .headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    // Nothing has reached the client yet: a replica that is overloaded, scaling or dead
    // (429/502/503, vLLM's empty 500) gets the request retried on another one. A 429 or 503
    // means the replica did not start generating.
    if (matches!(status, 429 | 502 | 503) || (status == 500 && empty)) && can_retry(ctx) {
        ctx.retry_status = true;
        ctx.upstream_status = None;
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "replica unavailable; retrying on another",
        ));
    }
    // An error answer with an empty body ends the response with its header, leaving no body
    // piece to put the OpenAI-shaped error into; so it becomes our own error (same status).
    if status >= 400 && empty {
        ctx.failure = Some(ApiError::UpstreamEmptyError {
            model: ctx.model_label().to_string(),
            status,
        });
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "upstream error with an empty body",
        ));
    }
    Ok(())
}

pub fn on_response_header(
    response: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    version: http::Version,
) -> Result<()> {
    let http11 = version == http::Version::HTTP_11;
    let status = response.status.as_u16();
    ctx.upstream_status = Some(status);
    response.insert_header("x-request-id", ctx.request_id.as_str())?;
    // A replica's 429/503 (every retry spent) tells SDKs when to come back; vLLM sends none.
    if matches!(status, 429 | 503) && !response.headers.contains_key(http::header::RETRY_AFTER) {
        let secs = crate::errors::RETRY_AFTER_SECONDS;
        response.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
        response.insert_header("retry-after-ms", (secs * 1000).to_string())?;
    }
    if let Some(reservation) = ctx.reservation.as_ref() {
        for (name, value) in reservation.headers().pairs() {
            response.insert_header(name, value)?;
        }
    }
    for name in &ctx.remove_response_headers {
        response.remove_header(name);
    }
    for (name, value) in &ctx.set_response_headers {
        response.insert_header(name.clone(), value.clone())?;
    }
    let sent_at = ctx.upstream_sent_at.unwrap_or(ctx.started);
    let body_changes = if status >= 400 {
        // The replica's error shape differs by server; the client gets OpenAI's.
        ctx.error_body = Some(BytesMut::new());
        response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        true
    } else if is_event_stream(response) {
        let mut config = MeterConfig::sse(StreamProtocol::OpenAi, ctx.strip_usage);
        config.prompt_tokens_hint = estimate_prompt_tokens(ctx.prompt_bytes);
        ctx.meter = Some(ResponseMeter::new(config, sent_at));
        // Events may be removed (usage chunk), rewritten (error events) or appended
        // (truncation), so the length is not known up front.
        true
    } else {
        ctx.meter = Some(ResponseMeter::new(MeterConfig::json(status), sent_at));
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
    (prompt_bytes as u64).div_ceil(4)
}

/// The cluster's `timeouts.total_ms` ran out while the response was still coming: end it.
/// Checked as pieces arrive, so a silent replica is bounded by `read_ms` instead.
pub fn check_total_deadline(ctx: &mut RequestCtx, end_of_stream: bool) -> Result<()> {
    let Some(total) = ctx.route.as_ref().and_then(|r| r.cluster.timeouts.total) else {
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
    if let Some(buf) = ctx.error_body.as_mut() {
        if let Some(piece) = body.as_ref() {
            let room = MAX_ERROR_BODY.saturating_sub(buf.len());
            buf.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        *body = if end_of_stream {
            let status = ctx.upstream_status.unwrap_or(502);
            Some(crate::upstream_error::normalize_error_body(status, buf))
        } else {
            Some(Bytes::new())
        };
    } else if let Some(meter) = ctx.meter.as_mut() {
        let now = Instant::now();
        if let Some(piece) = body.as_ref() {
            if let BodyAction::Replace(replacement) = meter.on_body(piece, now) {
                *body = Some(replacement);
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
        ctx.response_bytes += piece.len();
    }
}

/// The upstream failed after the response started (connection cut): what the client still
/// needs to see the stream end as a failure — the truncation error event.
pub fn tail_after_upstream_failure(ctx: &mut RequestCtx) -> Option<Bytes> {
    let tail = ctx.meter.as_mut()?.on_end(Instant::now())?;
    ctx.response_bytes += tail.len();
    Some(tail)
}
