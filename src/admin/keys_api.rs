//! `/admin/keys`: create (the secret is returned once), list, get, update, delete. Changes are
//! written atomically to the keys file and apply to the next request, without a reload.

use http::{Response, StatusCode};
use serde_json::json;

use super::reply::{error_reply, field_errors_reply, json_reply};
use crate::auth::{now_unix, KeyAdminError, KeyPatch, KeyRegistry, NewKey};
use crate::state::AppState;

pub(super) fn admin_error(e: &KeyAdminError) -> Response<Vec<u8>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::BAD_REQUEST {
        return field_errors_reply(&e.to_string(), "invalid_key", &e.field_errors());
    }
    let code = match status {
        StatusCode::NOT_FOUND => "key_not_found",
        StatusCode::CONFLICT => "key_exists",
        _ => "keys_file_error",
    };
    error_reply(status, &e.to_string(), code)
}

pub(super) fn bad_json(e: serde_json::Error) -> Response<Vec<u8>> {
    field_errors_reply(
        &format!("Invalid request body: {e}."),
        "invalid_json",
        &Vec::<()>::new(),
    )
}

fn registry(state: &AppState) -> Result<std::sync::Arc<KeyRegistry>, Box<Response<Vec<u8>>>> {
    state.keys().ok_or_else(|| {
        Box::new(error_reply(
            StatusCode::CONFLICT,
            "API keys are off: the config has no [auth] keys_file.",
            "auth_disabled",
        ))
    })
}

pub fn handle(state: &AppState, method: &str, rest: &str, body: &[u8]) -> Response<Vec<u8>> {
    let keys = match registry(state) {
        Ok(k) => k,
        Err(reply) => return *reply,
    };
    let now = now_unix();
    match (method, rest) {
        ("GET", "") => {
            let list: Vec<_> = keys.list().iter().map(|k| k.view(now)).collect();
            json_reply(StatusCode::OK, &json!({ "object": "list", "data": list }))
        }
        ("POST", "") => {
            let new: NewKey = match serde_json::from_slice(body) {
                Ok(n) => n,
                Err(e) => return bad_json(e),
            };
            match keys.create(new, now) {
                Ok((secret, key)) => json_reply(
                    StatusCode::CREATED,
                    &json!({ "key": secret, "entry": key.view(now),
                             "note": "The key is shown only this once; only its SHA-256 is stored." }),
                ),
                Err(e) => admin_error(&e),
            }
        }
        ("GET", name) => match keys.get(name) {
            Some(k) => json_reply(StatusCode::OK, &k.view(now)),
            None => admin_error(&KeyAdminError::NotFound(name.to_string())),
        },
        ("PATCH", name) => {
            let patch: KeyPatch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return bad_json(e),
            };
            match keys.update(name, &patch, now) {
                Ok(k) => json_reply(StatusCode::OK, &k.view(now)),
                Err(e) => admin_error(&e),
            }
        }
        ("DELETE", name) => match keys.delete(name) {
            Ok(k) => {
                state.limiter.forget_key(&k.name);
                json_reply(StatusCode::OK, &json!({ "deleted": k.name }))
            }
            Err(e) => admin_error(&e),
        },
        _ => error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {method} is not allowed here."),
            "method_not_allowed",
        ),
    }
}
