//! Normalises upstream error bodies (vLLM, trtllm-serve, Triton, FastAPI) to the OpenAI shape
//! `{"error":{"message","type","param","code"}}` with `code` a string or null, so SDK clients
//! read `.type`/`.code` whatever replica answered. The caller keeps the upstream status.
//!
//! Shapes handled (UPSTREAMS.md §3.4, §4, §7, §9.8): vLLM ≥0.10.1 nested `{"error":{…,"code":400}}`;
//! vLLM ≤0.10.0 / trtllm flat `{"object":"error","message",…,"code":400}` (also wrapped in
//! `"error"` mid-stream); `{"error":"str"}`; `{"detail":"str"|[…]}`; empty bodies; non-JSON text.
//! An already OpenAI-shaped body passes through byte-identical.

pub mod anthropic;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest message kept from an upstream body, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// An error in OpenAI terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl OpenAiError {
    /// `{"error":{"message":…,"type":…,"param":…,"code":…}}`, compact.
    pub fn to_body(&self) -> Bytes {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: &'a OpenAiError,
        }
        // Serialising plain strings and options cannot fail; fall back to a fixed body anyway.
        serde_json::to_vec(&Envelope { error: self })
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"upstream error","type":"server_error","param":null,"code":null}}"#))
    }
}

/// Result of [`normalize_error`]: the error, and whether the input was already OpenAI-shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedError {
    pub error: OpenAiError,
    pub already_openai: bool,
}

/// Converts any upstream error body to an OpenAI-shaped body; an OpenAI-shaped body is returned
/// unchanged (same bytes).
pub fn normalize_error_body(status: u16, body: &[u8]) -> Bytes {
    let normalized = normalize_error(status, body);
    if normalized.already_openai {
        Bytes::copy_from_slice(body)
    } else {
        normalized.error.to_body()
    }
}

/// Parses any upstream error body into an [`OpenAiError`]. `status` is the HTTP status (use 0
/// when unknown, e.g. for an error event inside a 200 stream: the body's integer code is used).
pub fn normalize_error(status: u16, body: &[u8]) -> NormalizedError {
    let trimmed = body.trim_ascii();
    let parts = match serde_json::from_slice::<Value>(trimmed) {
        _ if trimmed.is_empty() => Parts::message(format!(
            "upstream returned HTTP {} with an empty body",
            effective_status(status, None)
        )),
        Ok(Value::Object(map)) => {
            if let Some(error) = openai_error_of(&map) {
                return NormalizedError {
                    error,
                    already_openai: true,
                };
            }
            parts_of_object(&map, trimmed)
        }
        Ok(Value::String(s)) => Parts::message(s),
        Ok(_) | Err(_) => Parts::message(String::from_utf8_lossy(trimmed).into_owned()),
    };
    NormalizedError {
        error: parts.resolve(status),
        already_openai: false,
    }
}

/// True for `{"error":{"message":str,"type":str,"param":str|null,"code":str|null,…}}`.
pub fn is_openai_shaped(body: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<Value>(body.trim_ascii()),
        Ok(Value::Object(map)) if openai_error_of(&map).is_some()
    )
}

/// For an SSE event's data: `None` unless it is an object with a truthy `error` (what SDKs raise
/// on). Otherwise the normalised error and, if the event was not OpenAI-shaped, the replacement
/// data (JSON, no framing).
pub fn normalize_stream_error_event(data: &[u8]) -> Option<(OpenAiError, Option<Bytes>)> {
    let value: Value = serde_json::from_slice(data.trim_ascii()).ok()?;
    let truthy = match value.get("error")? {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Bool(true) | Value::Number(_) => true,
    };
    if !truthy {
        return None;
    }
    let normalized = normalize_error(0, data);
    let mut error = normalized.error;
    // SDKs switch on `code`; a mid-stream event always gets a string one (vLLM sends an
    // integer, which becomes null in OpenAI terms).
    let coded = error.code.is_none();
    if coded {
        let code = match error.kind.as_str() {
            "invalid_request_error" => "invalid_request",
            _ => "upstream_error",
        };
        error.code = Some(code.to_string());
    }
    let replacement = (!normalized.already_openai || coded).then(|| error.to_body());
    Some((error, replacement))
}

/// OpenAI `type` and `code` for an HTTP status (UPSTREAMS.md §7).
pub fn openai_type_and_code(status: u16, message: &str) -> (&'static str, Option<&'static str>) {
    let lower = message.to_ascii_lowercase();
    match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 if lower.contains("model") => ("invalid_request_error", Some("model_not_found")),
        400 if lower.contains("maximum context length") => {
            ("invalid_request_error", Some("context_length_exceeded"))
        }
        429 => ("requests", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    }
}

/// Fields gathered from an upstream body before mapping to OpenAI terms.
#[derive(Default)]
struct Parts {
    message: String,
    kind: Option<String>,
    param: Option<String>,
    string_code: Option<String>,
    int_code: Option<u16>,
}

impl Parts {
    fn message(message: String) -> Self {
        Self {
            message,
            ..Self::default()
        }
    }

    fn resolve(self, status: u16) -> OpenAiError {
        let status = effective_status(status, self.int_code);
        let message = if self.message.trim().is_empty() {
            format!("upstream returned HTTP {status}")
        } else {
            truncate_chars(self.message.trim(), MAX_MESSAGE_CHARS)
        };
        let (mapped_kind, mapped_code) = openai_type_and_code(status, &message);
        // vLLM puts class names ("BadRequestError") or reason phrases ("Bad Request") in `type`;
        // only snake_case values are OpenAI types.
        let kind = self
            .kind
            .filter(|k| is_snake_case(k))
            .unwrap_or_else(|| mapped_kind.to_owned());
        OpenAiError {
            message,
            kind,
            param: self.param,
            code: self.string_code.or_else(|| mapped_code.map(str::to_owned)),
        }
    }
}

/// The HTTP status if it is an error status, else the body's integer code, else 500.
fn effective_status(status: u16, int_code: Option<u16>) -> u16 {
    if status >= 400 {
        status
    } else {
        int_code.filter(|c| (400..=599).contains(c)).unwrap_or(500)
    }
}

fn openai_error_of(map: &Map<String, Value>) -> Option<OpenAiError> {
    let Value::Object(e) = map.get("error")? else {
        return None;
    };
    let message = e.get("message")?.as_str()?;
    let kind = e.get("type")?.as_str()?;
    let param = string_or_null(e.get("param")?)?;
    let code = string_or_null(e.get("code")?)?;
    Some(OpenAiError {
        message: message.to_owned(),
        kind: kind.to_owned(),
        param,
        code,
    })
}

/// `Some(Some(s))` for a string, `Some(None)` for null, `None` otherwise.
fn string_or_null(v: &Value) -> Option<Option<String>> {
    match v {
        Value::String(s) => Some(Some(s.clone())),
        Value::Null => Some(None),
        _ => None,
    }
}

fn parts_of_object(map: &Map<String, Value>, raw: &[u8]) -> Parts {
    match map.get("error") {
        Some(Value::Object(inner)) => return parts_of_fields(inner),
        Some(Value::String(s)) => return Parts::message(s.clone()),
        Some(Value::Null) | None => {}
        Some(other) => return Parts::message(other.to_string()),
    }
    if map.contains_key("message") || map.get("object").and_then(Value::as_str) == Some("error") {
        return parts_of_fields(map);
    }
    match map.get("detail") {
        Some(Value::String(s)) => Parts::message(s.clone()),
        Some(other) => Parts::message(other.to_string()),
        None => Parts::message(String::from_utf8_lossy(raw).into_owned()),
    }
}

/// vLLM nested/flat and trtllm flat: `message`, `type`, `param`, `code` (int or string).
fn parts_of_fields(obj: &Map<String, Value>) -> Parts {
    let message = match obj.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let (string_code, int_code) = match obj.get("code") {
        Some(Value::String(s)) => (Some(s.clone()), None),
        Some(Value::Number(n)) => (None, n.as_u64().and_then(|c| u16::try_from(c).ok())),
        _ => (None, None),
    };
    Parts {
        message,
        kind: obj.get("type").and_then(Value::as_str).map(str::to_owned),
        param: obj.get("param").and_then(Value::as_str).map(str::to_owned),
        string_code,
        int_code,
    }
}

fn is_snake_case(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("normalised body is JSON")
    }

    #[test]
    fn openai_corpus_bodies_pass_through_byte_identical() {
        for (status, name) in [
            (404, "openai-404-model-not-found.json"),
            (400, "openai-400-unsupported-parameter.json"),
        ] {
            let body = corpus(name);
            assert!(is_openai_shaped(&body), "{name}");
            assert_eq!(normalize_error_body(status, &body), body, "{name}");
        }
    }

    #[test]
    #[allow(clippy::too_many_lines)] // one table of cases
    fn upstream_shapes_table() {
        const CTX: &str = "This model's maximum context length is 4096 tokens. However, your request has 4100 input tokens.";
        let ctx_nested = format!(
            r#"{{"error": {{"message": "{CTX}", "type": "BadRequestError", "param": null, "code": 400}}}}"#
        );
        let ctx_flat = format!(
            r#"{{"object":"error","message":"{CTX}","type":"BadRequestError","param":null,"code":400}}"#
        );
        // (status, body, message, type, code, param)
        type Case<'a> = (
            u16,
            String,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (400, ctx_nested, CTX, "invalid_request_error", Some("context_length_exceeded"), None),
            (400, ctx_flat, CTX, "invalid_request_error", Some("context_length_exceeded"), None),
            (
                404,
                r#"{"error":{"message":"The model `x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#.into(),
                "The model `x` does not exist.",
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            ),
            (
                404,
                r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#.into(),
                "The model `x` does not exist.",
                "invalid_request_error",
                Some("model_not_found"),
                None,
            ),
            (401, r#"{"error":"Unauthorized"}"#.into(), "Unauthorized", "invalid_request_error", Some("invalid_api_key"), None),
            (
                400,
                r#"{"error":"1 validation error for CompletionRequest\nfoo\n  Extra inputs are not permitted"}"#.into(),
                "1 validation error for CompletionRequest\nfoo\n  Extra inputs are not permitted",
                "invalid_request_error",
                None,
                None,
            ),
            (400, r#"{"error":"Model version not ready"}"#.into(), "Model version not ready", "invalid_request_error", None, None),
            (404, r#"{"detail":"Unknown model: llama"}"#.into(), "Unknown model: llama", "invalid_request_error", Some("model_not_found"), None),
            (404, r#"{"detail":"Not Found"}"#.into(), "Not Found", "invalid_request_error", None, None),
            (
                422,
                r#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#.into(),
                r#"[{"loc":["body","model"],"msg":"field required"}]"#,
                "invalid_request_error",
                None,
                None,
            ),
            (500, String::new(), "upstream returned HTTP 500 with an empty body", "server_error", None, None),
            (502, "<html>Bad gateway</html>\n".into(), "<html>Bad gateway</html>", "server_error", None, None),
            (
                503,
                r#"{"error":"The model is currently scaling. Please try again later."}"#.into(),
                "The model is currently scaling. Please try again later.",
                "server_error",
                None,
                None,
            ),
            (
                500,
                r#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#.into(),
                "boom",
                "server_error",
                None,
                None,
            ),
            (400, r#"{"error":{"message":"x","type":"Bad Request","param":null,"code":400}}"#.into(), "x", "invalid_request_error", None, None),
            (
                400,
                r#"{"error":{"message":"x","type":"invalid_request_error","param":null,"code":"custom"},"extra":1}"#.into(),
                "x",
                "invalid_request_error",
                Some("custom"),
                None,
            ),
        ];
        for (status, body, message, kind, code, param) in cases {
            let out = normalize_error_body(status, body.as_bytes());
            assert!(is_openai_shaped(&out), "{body} -> {out:?}");
            let v = json(&out);
            let e = &v["error"];
            assert_eq!(e["message"], message, "{body}");
            assert_eq!(e["type"], kind, "{body}");
            assert_eq!(e["code"].as_str(), code, "{body}");
            assert_eq!(e["param"].as_str(), param, "{body}");
            if is_openai_shaped(body.as_bytes()) {
                assert_eq!(out, body.as_bytes(), "already OpenAI-shaped: unchanged");
            } else {
                assert_eq!(v.as_object().map(Map::len), Some(1));
                assert_eq!(e.as_object().map(Map::len), Some(4));
            }
        }
    }

    #[test]
    fn long_text_is_truncated_on_a_char_boundary() {
        let body = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let out = json(&normalize_error_body(500, body.as_bytes()));
        let msg = out["error"]["message"].as_str().unwrap();
        assert_eq!(msg.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn stream_error_events() {
        let vllm = br#"{"error": {"message": "bad", "type": "BadRequestError", "param": null, "code": 400}}"#;
        let (err, replacement) = normalize_stream_error_event(vllm).unwrap();
        assert_eq!(err.kind, "invalid_request_error");
        let replacement = replacement.unwrap();
        assert_eq!(
            &replacement[..],
            br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"invalid_request"}}"#
        );
        let triton = br#"{"error":"Request was cancelled"}"#;
        let (err, replacement) = normalize_stream_error_event(triton).unwrap();
        let code = err.code.as_deref();
        assert_eq!(
            (err.kind.as_str(), code),
            ("server_error", Some("upstream_error"))
        );
        assert!(replacement.is_some());
        // OpenAI-shaped with a string code: left as it is; a null code gets one.
        let shaped = br#"{"error":{"message":"m","type":"server_error","param":null,"code":"x"}}"#;
        assert_eq!(normalize_stream_error_event(shaped).unwrap().1, None);
        let null = br#"{"error":{"message":"m","type":"server_error","param":null,"code":null}}"#;
        assert!(normalize_stream_error_event(null).unwrap().1.is_some());
        assert!(normalize_stream_error_event(br#"{"error":null,"choices":[]}"#).is_none());
        assert!(normalize_stream_error_event(b"[DONE]").is_none());
    }

    #[test]
    fn never_panics_on_odd_bodies() {
        for body in [
            &b"\xff\xfe"[..],
            b"[]",
            b"123",
            b"{\"error\":[1]}",
            b"{\"error\":{\"code\":-1}}",
            b"{",
        ] {
            let out = normalize_error_body(500, body);
            assert!(is_openai_shaped(&out));
        }
    }
}
