//! Fleet-mode admin endpoints (`[fleet]`): key writes go to Redis (503 when it is
//! unreachable: a change is made on every instance or on none), `GET /admin/fleet`,
//! `GET /admin/usage?scope=fleet`, `POST /admin/reload?scope=fleet`.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::json;

use super::keys_api;
use super::reply::{error_reply, json_reply};
use crate::auth::{now_unix, KeyPatch, NewKey};
use crate::distributed::keys::{self, FleetKeyError};
use crate::distributed::{fleet_view, FleetError, FleetLink};
use crate::state::AppState;

fn unavailable(e: &FleetError) -> Response<Vec<u8>> {
    error_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("The fleet's Redis is unreachable; try again shortly. ({e})"),
        "fleet_store_unavailable",
    )
}

fn key_error(e: FleetKeyError) -> Response<Vec<u8>> {
    match e {
        FleetKeyError::Key(e) => keys_api::admin_error(&e),
        FleetKeyError::Store(e) => error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &FleetKeyError::Store(e).to_string(),
            "fleet_store_unavailable",
        ),
    }
}

/// Applies what Redis now holds to this instance at once (the others follow by pub/sub).
async fn resync(state: &AppState, link: &FleetLink) {
    if let Some(registry) = state.keys() {
        if let Ok((_, all)) = keys::load_all(link).await {
            keys::apply(&registry, &state.limiter, all, "admin");
        }
    }
}

/// `/admin/keys` in fleet mode. Reads are served from memory like on a single node.
pub async fn keys(
    state: &AppState,
    link: &FleetLink,
    method: &str,
    rest: &str,
    body: &[u8],
) -> Response<Vec<u8>> {
    let now = now_unix();
    let reply = match (method, rest) {
        ("POST", "") => {
            let new: NewKey = match serde_json::from_slice(body) {
                Ok(n) => n,
                Err(e) => return keys_api::bad_json(e),
            };
            match keys::create(link, new, now).await {
                Ok((secret, key)) => json_reply(
                    StatusCode::CREATED,
                    &json!({ "key": secret, "entry": key.view(now),
                             "note": "The key is shown only this once; only its SHA-256 is stored." }),
                ),
                Err(e) => return key_error(e),
            }
        }
        ("PATCH", name) if !name.is_empty() => {
            let patch: KeyPatch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return keys_api::bad_json(e),
            };
            match keys::update(link, name, &patch, now).await {
                Ok(k) => json_reply(StatusCode::OK, &k.view(now)),
                Err(e) => return key_error(e),
            }
        }
        ("DELETE", name) if !name.is_empty() => match keys::delete(link, name).await {
            Ok(()) => json_reply(StatusCode::OK, &json!({ "deleted": name })),
            Err(e) => return key_error(e),
        },
        _ => return keys_api::handle(state, method, rest, body),
    };
    resync(state, link).await;
    reply
}

/// `GET /admin/fleet`: live instances, their config generation and Redis state.
pub async fn view(state: &AppState, link: &FleetLink) -> Response<Vec<u8>> {
    let this = json!({
        "id": link.settings.instance_id,
        "generation": state.generation(),
        "redis": if link.is_up() { "up" } else { "down" },
        "instances_known": link.lease.instances(),
    });
    match fleet_view::instances(link).await {
        Ok(list) => json_reply(
            StatusCode::OK,
            &json!({ "object": "fleet", "this": this, "instances": list }),
        ),
        Err(e) => json_reply(
            StatusCode::OK,
            &json!({ "object": "fleet", "this": this, "instances": [], "error": e.to_string() }),
        ),
    }
}

pub async fn usage(link: &FleetLink) -> Response<Vec<u8>> {
    match fleet_view::fleet_usage(link).await {
        Ok(v) => json_reply(StatusCode::OK, &v),
        Err(e) => unavailable(&e),
    }
}

pub async fn reload(link: &FleetLink) -> Response<Vec<u8>> {
    match fleet_view::reload_all(link, Duration::from_secs(3)).await {
        Ok(v) => json_reply(StatusCode::OK, &v),
        Err(e) => unavailable(&e),
    }
}
