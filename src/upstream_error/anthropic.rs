//! Anthropic's error shape, `{"type":"error","error":{"type":…,"message":…}}`: the one place it
//! is written, and the normaliser of a replica's error body on the Messages endpoints. An
//! Anthropic-shaped body with one of Anthropic's error types passes byte-identical; any other
//! body (vLLM puts its OpenAI error's type, e.g. `BadRequestError`, in `error.type`) keeps its
//! message and gets the Anthropic type of its status.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::normalize_error;

/// Anthropic's `error.type` for an HTTP status (the table of Anthropic's API errors).
pub fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// Serialise `{"type":"error","error":{"type":kind,"message":message}}`.
pub fn anthropic_error_body(kind: &str, message: &str) -> Bytes {
    let envelope = Envelope {
        kind: "error",
        error: Inner { kind, message },
    };
    // Serialising plain strings into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// Anthropic's error types (its API's error table).
pub const ERROR_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// True for `{"type":"error","error":{"type":<one of ERROR_TYPES>,"message":str,…},…}`.
pub fn is_anthropic_shaped(body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body.trim_ascii()) else {
        return false;
    };
    map.get("type").and_then(Value::as_str) == Some("error")
        && map.get("error").is_some_and(|e| {
            e.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| ERROR_TYPES.contains(&t))
                && e.get("message").is_some_and(Value::is_string)
        })
}

/// A replica's error body (any shape) as the Anthropic-shaped body the client gets.
pub fn normalize_anthropic_error_body(status: u16, body: &[u8]) -> Bytes {
    if is_anthropic_shaped(body) {
        return Bytes::copy_from_slice(body);
    }
    let error = normalize_error(status, body).error;
    anthropic_error_body(type_for_status(status), &error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_bodies_pass_byte_identical() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens must be positive"}}"#;
        assert_eq!(normalize_anthropic_error_body(400, body), &body[..]);
    }

    #[test]
    fn other_shapes_keep_the_message_and_take_the_status_type() {
        let cases: [(u16, &[u8], &str, &str); 5] = [
            (
                400,
                br#"{"type":"error","error":{"type":"BadRequestError","message":"max_tokens must be positive"}}"#,
                "invalid_request_error",
                "max_tokens must be positive",
            ),
            (
                404,
                br#"{"detail":"Not Found"}"#,
                "not_found_error",
                "Not Found",
            ),
            (
                400,
                br#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#,
                "invalid_request_error",
                "bad",
            ),
            (
                503,
                b"",
                "overloaded_error",
                "upstream returned HTTP 503 with an empty body",
            ),
            (500, b"boom", "api_error", "boom"),
        ];
        for (status, body, kind, message) in cases {
            let v: Value =
                serde_json::from_slice(&normalize_anthropic_error_body(status, body)).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind);
            assert_eq!(v["error"]["message"], message);
        }
    }
}
