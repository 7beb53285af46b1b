//! `upstream_peer`, `fail_to_connect`, `error_while_proxy`, `upstream_response_filter`: which
//! replica each attempt goes to, and whether a failed attempt is retried on another.

use std::time::Instant;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::errors::{ApiError, StoredResponseError};
use crate::fleet::{Outcome, SelectCtx, SelectError};
use crate::state::queues::SlotRelease;

pub fn choose_peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    match try_choose_peer(ctx)? {
        Ok(peer) => Ok(peer),
        Err(e) => Err(refuse(ctx, e)),
    }
}

/// The next replica, or why none could be chosen (`Saturated`: the caller may queue).
pub fn try_choose_peer(ctx: &mut RequestCtx) -> Result<Result<Box<HttpPeer>, SelectError>> {
    let Some(route) = ctx.admission.route.as_ref() else {
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
    // The previous attempt's slot is released (and handed to the queue) before choosing again.
    ctx.attempt.in_flight = None;
    ctx.attempt.queue_slot = None;
    let now = Instant::now();
    let select = SelectCtx {
        tried: &ctx.attempt.tried,
        last: ctx.attempt.replica_index,
        prefix_key: ctx.admission.prefix_key,
        prefix_blocks: &ctx.admission.prefix_blocks,
        now,
        rand: fastrand::u64(..),
    };
    let chosen = match ctx.admission.pinned_replica.as_deref() {
        Some(pinned) => pinned_pick(ctx, route, pinned, &runtime.replicas, now),
        None => runtime.balancer.select(&runtime.replicas, &select),
    };
    let index = match chosen {
        Ok(index) => index,
        Err(e) => return Ok(Err(e)),
    };
    let state = &runtime.replicas[index];
    let replica = &cluster.replicas[index];
    ctx.attempt.in_flight = Some(state.begin());
    ctx.attempt.queue_slot = runtime.queue.clone().map(SlotRelease::new);
    ctx.attempt.replica_index = Some(index);
    ctx.attempt.tried.push(index);
    ctx.attempt.count += 1;
    ctx.attempt.replica = Some(replica.authority.clone());

    let server = &ctx.config.server;
    let mut peer = HttpPeer::new(replica.addr, false, String::new());
    peer.options.connection_timeout = Some(cluster.timeouts.connect);
    peer.options.total_connection_timeout = Some(cluster.timeouts.connect);
    peer.options.read_timeout = Some(cluster.timeouts.read);
    peer.options.write_timeout = Some(server.write_timeout);
    peer.options.idle_timeout = Some(server.upstream_idle_timeout);
    Ok(Ok(Box::new(peer)))
}

/// No replica for this attempt: the client's error goes into `ctx`, Pingora gets the status.
pub fn refuse(ctx: &mut RequestCtx, e: SelectError) -> Box<Error> {
    if let (Some(replica), SelectError::NoEligible { .. }) = (&ctx.admission.pinned_replica, &e) {
        let replica = replica.clone();
        let id = ctx
            .admission
            .stored_id
            .clone()
            .unwrap_or_else(|| "-".into());
        ctx.outcome.failure = Some(StoredResponseError::ReplicaUnavailable { id, replica }.into());
        return Error::explain(
            ErrorType::HTTPStatus(503),
            "the pinned replica is unavailable",
        );
    }
    let (alias, cluster) = ctx.admission.route.as_ref().map_or_else(
        || ("-".to_string(), "-".to_string()),
        |r| (r.alias.clone(), r.cluster.name.clone()),
    );
    let (error, status) = no_replica(e, &alias, &cluster, ctx.attempt.tried.len());
    ctx.outcome.failure = Some(error);
    Error::explain(ErrorType::HTTPStatus(status), "no replica chosen")
}

/// A stored response's replica, the only one this request may use (tried once; a stale pooled
/// connection's retry is allowed again by `on_proxy_error`).
fn pinned_pick(
    ctx: &RequestCtx,
    route: &crate::config::Route,
    pinned: &str,
    replicas: &[std::sync::Arc<crate::fleet::ReplicaState>],
    now: Instant,
) -> Result<usize, SelectError> {
    match super::responses::pinned_index(route, pinned) {
        Some(i) if ctx.attempt.tried.contains(&i) => Err(SelectError::Exhausted),
        Some(i) if replicas.get(i).is_some_and(|r| r.is_eligible(now)) => Ok(i),
        _ => Err(SelectError::NoEligible { total: 1 }),
    }
}

/// The client's error (and status) when no replica can take the attempt.
fn no_replica(e: SelectError, model: &str, cluster: &str, tried: usize) -> (ApiError, u16) {
    let model = model.to_string();
    let cluster = cluster.to_string();
    match e {
        SelectError::NoReplicas | SelectError::NoEligible { .. } => {
            (ApiError::NoReplicaAvailable { model, cluster }, 503)
        }
        SelectError::Saturated { retry_after } => (
            ApiError::Overloaded {
                model,
                cluster,
                retry_after_secs: retry_after.as_secs().clamp(1, 60),
            },
            503,
        ),
        SelectError::Exhausted => (
            ApiError::UpstreamUnreachable {
                model,
                detail: format!("all {tried} tried replicas failed"),
            },
            502,
        ),
    }
}

/// The current attempt's replica state.
fn current_replica(ctx: &RequestCtx) -> Option<&std::sync::Arc<crate::fleet::ReplicaState>> {
    ctx.attempt.in_flight.as_ref().map(|slot| slot.replica())
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
    // A stored response lives on one replica: another would only answer 404.
    if ctx.admission.pinned_replica.is_some()
        || ctx.attempt.count > ctx.config.server.connect_retries
    {
        return false;
    }
    let Some(route) = ctx.admission.route.as_ref() else {
        return false;
    };
    let now = Instant::now();
    ctx.config.runtime(&route.cluster.name).is_some_and(|rt| {
        rt.replicas
            .iter()
            .enumerate()
            .any(|(i, r)| !ctx.attempt.tried.contains(&i) && r.is_eligible(now))
    })
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
    if ctx.attempt.retry_status {
        ctx.attempt.retry_status = false;
        e.set_retry(can_retry(ctx));
        return e;
    }
    let stale_pool = client_reused
        && ctx.reply.upstream_status.is_none()
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
        );
    if stale_pool && ctx.attempt.count <= ctx.config.server.connect_retries {
        // A fresh connection to the same replica is fine here; allow it again.
        ctx.attempt.tried.pop();
        ctx.attempt.replica_index = None;
        e.set_retry(true);
        return e;
    }
    let outcome = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if ctx.reply.upstream_status.is_none() =>
        {
            Outcome::Timeout
        }
        _ if e.esource() == &pingora_core::ErrorSource::Upstream => Outcome::StreamBroken,
        _ => Outcome::Neutral,
    };
    report(ctx, outcome);
    e.set_retry(false);
    e
}

/// Before anything reaches the client. An error answer with an empty body ends the response
/// with its header, leaving no body piece to put the OpenAI-shaped error into; so it becomes
/// our own error (same status) through `fail_to_proxy`.
pub fn on_upstream_response_header(response: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let status = response.status.as_u16();
    ctx.reply.upstream_status = Some(status);
    if let (Some(replica), Some(sent)) = (current_replica(ctx), ctx.attempt.upstream_sent_at) {
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
        ctx.attempt.retry_status = true;
        ctx.reply.upstream_status = None;
        return Err(Error::explain(
            ErrorType::HTTPStatus(status),
            "replica unavailable; retrying on another",
        ));
    }
    // An error answer with an empty body ends the response with its header, leaving no body
    // piece to put the OpenAI-shaped error into; so it becomes our own error (same status).
    if status >= 400 && empty {
        ctx.outcome.failure = Some(ApiError::UpstreamEmptyError {
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
