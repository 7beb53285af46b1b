//! `upstream_peer` of a cluster with an admission queue: when every replica is saturated the
//! first attempt waits in the cluster's queue (see `state::queues`) instead of being shed,
//! racing its deadline and the client's connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::peer;
use crate::fleet::{QueueSettings, SelectError};
use crate::state::queues::{ClusterQueue, Rejected, Waiter, Wake};

/// How often the head of a queue checks the replicas itself (a missed wake-up, or a
/// saturation by the replicas' scraped queues, which no request of ours frees).
const HEAD_RECHECK: Duration = Duration::from_millis(50);

pub async fn choose_peer(session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some((queue, settings)) = queue_of(ctx) else {
        return ctx.timed(peer::choose_peer);
    };
    if !queue.is_busy() {
        match ctx.timed(peer::try_choose_peer)? {
            Ok(peer) => return Ok(peer),
            Err(SelectError::Saturated { .. }) => {}
            Err(e) => return Err(peer::refuse(ctx, e)),
        }
    }
    wait_for_slot(session, ctx, &queue, settings).await
}

/// Only a request's first attempt queues; retries are answered as without a queue.
fn queue_of(ctx: &RequestCtx) -> Option<(Arc<ClusterQueue>, QueueSettings)> {
    if ctx.attempt.count > 0 {
        return None;
    }
    let cluster = &ctx.admission.route.as_ref()?.cluster;
    let settings = cluster.balance.queue?;
    let queue = ctx.config.runtime(&cluster.name)?.queue.clone()?;
    Some((queue, settings))
}

enum Event {
    Wake(Wake),
    Deadline,
    ClientGone(Box<Error>),
}

async fn wait_for_slot(
    session: &mut Session,
    ctx: &mut RequestCtx,
    queue: &Arc<ClusterQueue>,
    settings: QueueSettings,
) -> Result<Box<HttpPeer>> {
    let retry_after = ctx
        .admission
        .route
        .as_ref()
        .map_or(Duration::from_secs(1), |r| r.cluster.balance.retry_after);
    let saturated = SelectError::Saturated { retry_after };
    let key_priority = ctx.admission.key.as_ref().map_or(0, |k| k.priority);
    let priority = ctx.admission.rules.priority.unwrap_or(key_priority);
    let Ok(mut waiter) = queue.enqueue(ctx.key_label(), priority) else {
        queue.count_rejected(Rejected::Full);
        return Err(peer::refuse(ctx, saturated));
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + settings.max_wait);
    let mut watch_client = true;
    loop {
        let event = tokio::select! {
            wake = waiter.wait(HEAD_RECHECK) => Event::Wake(wake),
            () = tokio::time::sleep_until(deadline) => Event::Deadline,
            gone = client_closed(session, watch_client) => match gone {
                Some(e) => Event::ClientGone(e),
                None => {
                    // The client sent bytes (a pipelined request): stop watching, keep waiting.
                    watch_client = false;
                    continue;
                }
            },
        };
        match event {
            Event::Wake(Wake::Recheck) => {}
            Event::Wake(Wake::Slot) => match ctx.timed(peer::try_choose_peer)? {
                Ok(peer) => {
                    waiter.claim();
                    queue.observe_wait(started.elapsed());
                    return Ok(peer);
                }
                Err(SelectError::Saturated { .. }) => waiter.requeue(),
                Err(e) => return Err(leave(ctx, waiter, e)),
            },
            Event::Deadline => {
                queue.count_rejected(Rejected::Timeout);
                return Err(leave(ctx, waiter, saturated));
            }
            Event::ClientGone(e) => {
                drop(waiter);
                queue.count_rejected(Rejected::ClientClosed);
                ctx.outcome.client_closed = true;
                // One kind whatever the protocol said (HTTP/2 reports a reset as `H2Error`), so
                // it is logged 499 `client_closed` and nothing is written back.
                log::debug!("client left the admission queue: {e}");
                return Err(
                    Error::explain(ErrorType::ConnectionClosed, "client left the queue")
                        .into_down(),
                );
            }
        }
    }
}

/// Out of the queue (at once: the next in line may take a slot meant for us), then refused.
fn leave(ctx: &mut RequestCtx, waiter: Waiter, e: SelectError) -> Box<Error> {
    drop(waiter);
    peer::refuse(ctx, e)
}

/// Resolves when the client closes or breaks its connection (its body was read in full, so
/// any read now is either the end of the connection or pipelined bytes: `None`).
async fn client_closed(session: &mut Session, watch: bool) -> Option<Box<Error>> {
    if !watch {
        return std::future::pending().await;
    }
    session
        .downstream_session
        .read_body_or_idle(true)
        .await
        .err()
}
