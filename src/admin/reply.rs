//! JSON replies for the admin API, errors in the same OpenAI shape as the client API.

use http::{Response, StatusCode};
use serde::Serialize;

use crate::errors::error_body;

pub fn json_reply(status: StatusCode, value: &impl Serialize) -> Response<Vec<u8>> {
    json_bytes(status, serde_json::to_vec_pretty(value).unwrap_or_default())
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

pub fn error_reply(status: StatusCode, message: &str, code: &str) -> Response<Vec<u8>> {
    reply_with_param(status, message, code, None)
}

/// An error about one request parameter (`error.param` names it).
pub fn error_reply_param(
    status: StatusCode,
    message: &str,
    code: &str,
    param: &str,
) -> Response<Vec<u8>> {
    reply_with_param(status, message, code, Some(param))
}

fn reply_with_param(
    status: StatusCode,
    message: &str,
    code: &str,
    param: Option<&str>,
) -> Response<Vec<u8>> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json_bytes(
        status,
        error_body(message, kind, param, Some(code)).to_vec(),
    )
}

/// A 400 with every field error listed: `{"error":{…}, "errors":[…]}`.
pub fn field_errors_reply(message: &str, code: &str, errors: &impl Serialize) -> Response<Vec<u8>> {
    let value = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code},
        "errors": errors,
    });
    json_reply(StatusCode::BAD_REQUEST, &value)
}
