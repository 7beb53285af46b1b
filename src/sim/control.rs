//! The `/sim/` control API used by tests: records, counters, faults, reset.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::Value;

use super::json::JsonObject;
use super::server::{full_response, SimBody};
use super::App;

/// Fault updates are tiny; refuse anything bigger.
const MAX_CONTROL_BODY: usize = 1024 * 1024;
const JSON: &str = "application/json";

pub async fn handle(app: &Arc<App>, request: Request<Incoming>) -> Response<SimBody> {
    let state = &app.state;
    let method = request.method().clone();
    match (method, request.uri().path()) {
        (Method::GET, "/sim/requests") => json_response(StatusCode::OK, &state.records()),
        (Method::GET, "/sim/stats") => json_response(StatusCode::OK, &state.stats()),
        (Method::GET, "/sim/faults") => json_response(StatusCode::OK, &state.faults()),
        (Method::POST, "/sim/faults") => update_faults(app, request).await,
        (Method::POST, "/sim/reset") => {
            state.reset();
            json_response(StatusCode::OK, &state.stats())
        }
        (_, "/sim/requests" | "/sim/stats" | "/sim/faults" | "/sim/reset") => {
            control_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => control_error(StatusCode::NOT_FOUND, "unknown /sim/ route"),
    }
}

async fn update_faults(app: &App, request: Request<Incoming>) -> Response<SimBody> {
    let body = match Limited::new(request.into_body(), MAX_CONTROL_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return control_error(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => {
            return control_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {error}"))
        }
    };
    match app.state.update_faults(&patch) {
        Ok(faults) => json_response(StatusCode::OK, &faults),
        Err(error) => control_error(StatusCode::BAD_REQUEST, &error.to_string()),
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<SimBody> {
    match serde_json::to_string(value) {
        Ok(text) => full_response(status, Some(JSON), text),
        Err(error) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn control_error(status: StatusCode, message: &str) -> Response<SimBody> {
    let body = JsonObject::new().field("error", message).finish();
    full_response(status, Some(JSON), body)
}
