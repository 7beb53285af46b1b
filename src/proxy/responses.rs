//! The Responses API's stored responses: vLLM keeps them in the replica that created them, so
//! `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel` and
//! `previous_response_id` follow-ups are pinned to that replica, found in the bounded
//! id → replica map ([`crate::fleet::stored`]) learnt from each response's `id`.

use std::sync::Arc;
use std::time::Instant;

use super::ctx::{InFlightGauge, RequestCtx};
use crate::config::Route;
use crate::errors::{ApiError, StoredResponseError};
use crate::fleet::stored::StoredAt;
use crate::routing::body::BodyScan;
use crate::routing::{self, Endpoint};
use crate::state::AppState;

/// `GET`/`DELETE`/`cancel` of `id`: the route and replica that stored it, pinned in `ctx`.
/// A key only ever reaches ids created under it; anything else is 404 `response_not_found`.
pub fn admit_stored(
    state: &AppState,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
    path: &str,
) -> Result<(), ApiError> {
    let id = routing::stored_response_id(path)
        .unwrap_or_default()
        .to_string();
    let not_found = || StoredResponseError::NotFound { id: id.clone() };
    let key = ctx.admission.key.as_ref().map(|k| k.name.as_str());
    let at = state.stored_responses.get(&id, key).ok_or_else(not_found)?;
    let route = stored_route(ctx, &at).ok_or_else(not_found)?;
    if !endpoint.served_by(route.cluster.serves) {
        return Err(not_found().into());
    }
    check_replica(ctx, &route, &at, &id)?;
    ctx.admission.in_flight_gauge = Some(InFlightGauge::hold(&ctx.config, &route.cluster.name));
    ctx.admission.route = Some(route);
    ctx.admission.pinned_replica = Some(at.replica.to_string());
    ctx.admission.stored_id = Some(id);
    Ok(())
}

/// A `POST /v1/responses` naming `previous_response_id`: the route pinned to the replica
/// holding it, or 404 `previous_response_not_found` (a random replica would only 404 too).
pub fn pin_previous(
    state: &AppState,
    ctx: &mut RequestCtx,
    scan: &BodyScan<'_>,
    route: Arc<Route>,
) -> Result<Arc<Route>, ApiError> {
    let Some(id) = scan
        .raw_value("previous_response_id")
        .and_then(|raw| serde_json::from_str::<Option<String>>(raw).ok())
        .flatten()
    else {
        return Ok(route);
    };
    let not_found = || StoredResponseError::PreviousNotFound {
        id: id.clone(),
        capacity: ctx.config.server.stored_responses,
    };
    let key = ctx.admission.key.as_ref().map(|k| k.name.as_str());
    let at = state.stored_responses.get(&id, key).ok_or_else(not_found)?;
    let stored = stored_route(ctx, &at)
        .filter(|r| Endpoint::Responses.served_by(r.cluster.serves))
        .ok_or_else(not_found)?;
    check_replica(ctx, &stored, &at, &id)?;
    ctx.admission.pinned_replica = Some(at.replica.to_string());
    // The body's model decides the served name; the stored response decides the cluster.
    Ok(Arc::new(Route {
        cluster: stored.cluster.clone(),
        ..(*route).clone()
    }))
}

/// The route a stored response was created under, with its cluster as configured now.
fn stored_route(ctx: &RequestCtx, at: &StoredAt) -> Option<Arc<Route>> {
    let route = routing::resolve(&ctx.config, &at.alias).ok()?;
    let allowed = ctx
        .admission
        .key
        .as_ref()
        .is_none_or(|k| k.allows_model(&at.alias));
    let cluster = ctx.config.cluster(&at.cluster)?;
    let has_replica = cluster
        .replicas
        .iter()
        .any(|r| r.authority == at.replica.as_ref());
    (allowed && has_replica).then(|| {
        Arc::new(Route {
            cluster: cluster.clone(),
            ..(**route).clone()
        })
    })
}

/// The replica must be in service now (else 503 with `Retry-After`).
fn check_replica(
    ctx: &RequestCtx,
    route: &Route,
    at: &StoredAt,
    id: &str,
) -> Result<(), StoredResponseError> {
    let eligible = pinned_index(route, &at.replica)
        .zip(ctx.config.runtime(&route.cluster.name))
        .is_some_and(|(i, rt)| rt.replicas[i].is_eligible(Instant::now()));
    if eligible {
        return Ok(());
    }
    Err(StoredResponseError::ReplicaUnavailable {
        id: id.to_string(),
        replica: at.replica.to_string(),
    })
}

/// The index of `authority` among the cluster's replicas.
pub fn pinned_index(route: &Route, authority: &str) -> Option<usize> {
    route
        .cluster
        .replicas
        .iter()
        .position(|r| r.authority == authority)
}

/// As the body passes: record a new response's id (from `response.created` or the body's
/// `id`) against the replica that answered, once, so follow-ups can reach it at once.
pub fn learn_id(state: &AppState, ctx: &mut RequestCtx) {
    if ctx.reply.response_id_recorded
        || ctx.endpoint != Some(Endpoint::Responses)
        || ctx.reply.upstream_status != Some(200)
    {
        return;
    }
    let Some(id) = ctx.reply.meter.as_ref().and_then(|m| m.response_id()) else {
        return;
    };
    let (Some(route), Some(replica)) = (ctx.admission.route.as_ref(), ctx.attempt.replica.as_ref())
    else {
        return;
    };
    let at = StoredAt {
        alias: route.alias.as_str().into(),
        cluster: route.cluster.name.as_str().into(),
        replica: replica.as_str().into(),
        key: ctx.admission.key.as_ref().map(|k| k.name.as_str().into()),
    };
    state
        .stored_responses
        .insert(id, at, ctx.config.server.stored_responses);
    ctx.reply.response_id_recorded = true;
}

/// After a successful `DELETE`, the id is forgotten.
pub fn forget_deleted(state: &AppState, ctx: &RequestCtx, status: u16) {
    if ctx.endpoint == Some(Endpoint::DeleteResponse) && (200..300).contains(&status) {
        if let Some(id) = ctx.admission.stored_id.as_deref() {
            state.stored_responses.remove(id);
        }
    }
}
