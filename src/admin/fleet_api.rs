//! `GET /admin/replicas`, `POST /admin/replicas/{cluster}/{ip:port}/drain|undrain`.

use std::net::SocketAddr;
use std::time::Instant;

use http::{Response, StatusCode};
use serde_json::json;

use super::reply::{error_reply, json_reply};
use crate::fleet::ReplicaId;
use crate::state::AppState;

pub fn list(state: &AppState) -> Response<Vec<u8>> {
    let views = state.fleet.snapshot(Instant::now());
    json_reply(StatusCode::OK, &json!({ "object": "list", "data": views }))
}

/// `rest` = `{cluster}/{ip:port}/drain` or `.../undrain`.
pub fn drain(state: &AppState, rest: &str) -> Response<Vec<u8>> {
    let mut parts = rest.rsplitn(2, '/');
    let (action, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let draining = match action {
        "drain" => true,
        "undrain" => false,
        _ => {
            return error_reply(
                StatusCode::NOT_FOUND,
                "Use POST /admin/replicas/{cluster}/{ip:port}/drain or /undrain.",
                "unknown_url",
            )
        }
    };
    let Some((cluster, addr)) = target.split_once('/') else {
        return error_reply(
            StatusCode::NOT_FOUND,
            "Use POST /admin/replicas/{cluster}/{ip:port}/drain or /undrain.",
            "unknown_url",
        );
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            &format!("`{addr}` is not an ip:port address."),
            "invalid_replica",
        );
    };
    let id = ReplicaId::new(cluster, addr);
    match state.fleet.set_draining(&id, draining) {
        Some(_) => json_reply(
            StatusCode::OK,
            &json!({ "replica": id.as_str(), "draining": draining }),
        ),
        None => error_reply(
            StatusCode::NOT_FOUND,
            &format!("No replica `{}` in the running config.", id.as_str()),
            "replica_not_found",
        ),
    }
}
