//! Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/version`)
//! translated to and from the OpenAI chat/completions the replicas serve. Pure logic: no
//! I/O, no clock (times are passed in), no Pingora.
//!
//! - [`request`]: an Ollama request body → the OpenAI body sent upstream (or a clear 400).
//! - [`stream`]: the replica's OpenAI SSE stream → Ollama's NDJSON lines, chunk by chunk with
//!   bounded state.
//! - [`response`]: a non-streaming OpenAI body → Ollama's one JSON object; the line shapes.
//! - [`local`]: what the gateway answers itself (`/api/tags`, `/api/show`, `/api/version`).

pub mod local;
pub mod request;
pub mod response;
pub mod stream;

pub use request::{translate_chat, translate_generate, RequestError, Translated};

pub use response::{Clock, JsonReply};
pub use stream::NdjsonStream;

/// Which Ollama call a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/chat` → `/v1/chat/completions`.
    Chat,
    /// `/api/generate` → `/v1/chat/completions` (or `/v1/completions` when raw).
    Generate,
}

/// Which OpenAI route of the replica a translated call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// `/v1/chat/completions`: `/api/chat`, and `/api/generate` (the replica applies the
    /// model's chat template, as Ollama applies its prompt template).
    ChatCompletions,
    /// `/v1/completions`: `/api/generate` with `raw: true` (the prompt as is).
    Completions,
}

impl Upstream {
    pub fn path(self) -> &'static str {
        match self {
            Upstream::ChatCompletions => "/v1/chat/completions",
            Upstream::Completions => "/v1/completions",
        }
    }
}

/// Ollama's error body: `{"error":"..."}`.
pub fn error_body(message: &str) -> bytes::Bytes {
    let body = serde_json::json!({ "error": message });
    bytes::Bytes::from(body.to_string())
}

/// An OpenAI error body (as the gateway normalises every replica's) → Ollama's, keeping the
/// message.
pub fn error_body_from_openai(status: u16, openai: &[u8]) -> bytes::Bytes {
    let message = serde_json::from_slice::<serde_json::Value>(openai)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("upstream replica answered HTTP {status}"));
    error_body(&message)
}

/// `finish_reason` (OpenAI) → `done_reason` (Ollama): tool calls end a turn as `stop`.
pub fn done_reason(finish_reason: Option<&str>) -> &str {
    match finish_reason {
        None | Some("stop" | "tool_calls" | "function_call") => "stop",
        Some(other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_message() {
        let openai = br#"{"error":{"message":"bad thing","type":"x","param":null,"code":null}}"#;
        assert_eq!(
            &error_body_from_openai(400, openai)[..],
            br#"{"error":"bad thing"}"#
        );
        assert_eq!(
            &error_body_from_openai(502, b"garbage")[..],
            br#"{"error":"upstream replica answered HTTP 502"}"#
        );
        assert_eq!(done_reason(Some("length")), "length");
        assert_eq!(done_reason(Some("tool_calls")), "stop");
    }
}
