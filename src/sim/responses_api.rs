//! vLLM's OpenAI Responses API (`/v1/responses`, `vllm/entrypoints/openai/responses/`): the
//! non-streaming response object, the event stream (`event: <type>\ndata: <json>\n\n`, every
//! event with `sequence_number`, no `[DONE]`), and the replica's in-process store of
//! responses (`VLLM_ENABLE_RESPONSES_API_STORE=1`) behind `GET`/`DELETE /v1/responses/{id}`
//! and `POST /v1/responses/{id}/cancel`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use super::generate::{chat_prompt_tokens, count_words, token_text};
use super::json::JsonObject;
use super::request::InferenceRequest;
use super::state::{Outcome, RequestTracker};
use super::stream::{ClientGone, EventWriter, Pacer, StreamPlan, MIDSTREAM_ERROR_MESSAGE};

/// Responses a replica keeps (oldest dropped first), so a long test run stays bounded.
const STORE_CAPACITY: usize = 10_000;

/// Prompt tokens of `input` (a string, or a list of messages) plus `instructions`.
pub fn prompt_tokens(fields: &Map<String, Value>) -> Option<u64> {
    let input = match fields.get("input")? {
        Value::String(text) => count_words(text),
        Value::Array(items) => chat_prompt_tokens(items),
        _ => return None,
    };
    let instructions = fields
        .get("instructions")
        .and_then(Value::as_str)
        .map_or(0, count_words);
    Some(input + instructions)
}

/// What the request body adds beyond the common fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponsesFields {
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub max_output_tokens: Option<u64>,
}

impl ResponsesFields {
    pub fn from_body(fields: &Map<String, Value>) -> Self {
        Self {
            previous_response_id: fields
                .get("previous_response_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            store: fields.get("store").and_then(Value::as_bool).unwrap_or(true),
            max_output_tokens: fields.get("max_output_tokens").and_then(Value::as_u64),
        }
    }
}

/// The replica's stored responses (id → the response object's JSON).
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, String>, VecDeque<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn put(&self, id: &str, json: String) {
        let mut inner = self.lock();
        if inner.0.insert(id.to_owned(), json).is_none() {
            inner.1.push_back(id.to_owned());
        }
        while inner.0.len() > STORE_CAPACITY {
            let Some(old) = inner.1.pop_front() else {
                break;
            };
            inner.0.remove(&old);
        }
    }

    pub fn get(&self, id: &str) -> Option<String> {
        self.lock().0.get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> bool {
        self.lock().0.remove(id).is_some()
    }
}

/// vLLM's 404 for an unknown id (`_make_not_found_error`).
pub fn not_found(id: &str) -> (StatusCode, String) {
    let inner = JsonObject::new()
        .field("message", &format!("Response with id '{id}' not found."))
        .field("type", "invalid_request_error")
        .field("param", "response_id")
        .field("code", &404);
    (
        StatusCode::NOT_FOUND,
        JsonObject::new().object("error", inner).finish(),
    )
}

/// `cancel` of a stored synchronous (not `background`) response.
pub fn cannot_cancel() -> String {
    let inner = JsonObject::new()
        .field("message", "Cannot cancel a synchronous response.")
        .field("type", "invalid_request_error")
        .field("param", "response_id")
        .field("code", &400);
    JsonObject::new().object("error", inner).finish()
}

/// `DELETE` answers OpenAI's deletion object.
pub fn deleted(id: &str) -> String {
    JsonObject::new()
        .field("id", id)
        .field("object", "response")
        .field("deleted", &true)
        .finish()
}

/// Everything that shapes one response object.
pub struct Shape<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub fields: &'a ResponsesFields,
}

fn message_id(id: &str) -> String {
    format!("msg_{}", id.trim_start_matches("resp_"))
}

fn output_part(text: &str) -> JsonObject {
    JsonObject::new()
        .raw("annotations", "[]")
        .field("text", text)
        .field("type", "output_text")
        .null("logprobs")
}

fn output_item(id: &str, text: Option<&str>) -> JsonObject {
    let content = match text {
        Some(text) => format!("[{}]", output_part(text).finish()),
        None => "[]".to_owned(),
    };
    JsonObject::new()
        .field("id", &message_id(id))
        .raw("content", &content)
        .field("role", "assistant")
        .field(
            "status",
            if text.is_some() {
                "completed"
            } else {
                "in_progress"
            },
        )
        .field("type", "message")
}

/// vLLM's `ResponsesResponse.model_dump()`, field order as vLLM writes it. `text`: the
/// output (none while in progress); `usage`: (input, output) tokens.
pub fn response_object(
    shape: &Shape<'_>,
    status: &str,
    text: Option<&str>,
    usage: Option<(u64, u64)>,
) -> String {
    let output = match text {
        Some(text) => format!("[{}]", output_item(shape.id, Some(text)).finish()),
        None => "[]".to_owned(),
    };
    let usage = match usage {
        Some((input, output)) => JsonObject::new()
            .field("input_tokens", &input)
            .raw("input_tokens_details", r#"{"cached_tokens":0}"#)
            .field("output_tokens", &output)
            .raw("output_tokens_details", r#"{"reasoning_tokens":0}"#)
            .field("total_tokens", &(input + output))
            .finish(),
        None => "null".to_owned(),
    };
    JsonObject::new()
        .field("id", shape.id)
        .field("created_at", &shape.created)
        .null("incomplete_details")
        .null("instructions")
        .null("metadata")
        .field("model", shape.model)
        .field("object", "response")
        .raw("output", &output)
        .field("parallel_tool_calls", &true)
        .field("temperature", &1.0)
        .field("tool_choice", "auto")
        .raw("tools", "[]")
        .field("top_p", &1.0)
        .field("background", &false)
        .field("max_output_tokens", &shape.fields.max_output_tokens)
        .field("previous_response_id", &shape.fields.previous_response_id)
        .field("status", status)
        .raw("text", r#"{"format":{"type":"text"}}"#)
        .field("truncation", "disabled")
        .raw("usage", &usage)
        .null("user")
        .finish()
}

/// The non-streaming answer: the completed response object (stored when `store`).
pub fn complete(
    shape: &Shape<'_>,
    request: &InferenceRequest,
    text: &str,
    store: &Store,
) -> String {
    let usage = (request.prompt_tokens, request.tokens_per_choice);
    let body = response_object(shape, "completed", Some(text), Some(usage));
    if shape.fields.store {
        store.put(shape.id, body.clone());
    }
    body
}

/// Writes the numbered events of one stream.
struct Events<'w> {
    writer: &'w mut EventWriter,
    seq: u64,
}

impl Events<'_> {
    async fn send(&mut self, kind: &str, body: JsonObject) -> Result<(), ClientGone> {
        let data = body
            .field("sequence_number", &self.seq)
            .field("type", kind)
            .finish();
        self.seq += 1;
        let event = format!("event: {kind}\ndata: {data}\n\n");
        self.writer.send(Bytes::from(event)).await
    }
}

fn text_ids(id: &str) -> JsonObject {
    JsonObject::new()
        .field("content_index", &0)
        .field("item_id", &message_id(id))
}

/// Streams one answer the way vLLM's simple (non-harmony) path does, with the plan's timing
/// and faults: a cut connection, or vLLM's generation-error ending (an `error` event and no
/// `response.completed`).
#[allow(clippy::too_many_lines)] // the simulator is a test tool (outside the 80-line rule)
pub async fn generate(
    plan: &StreamPlan,
    shape: &Shape<'_>,
    store: &Store,
    pacer: &mut Pacer,
    tracker: &mut RequestTracker,
    writer: &mut EventWriter,
) -> Result<Outcome, ClientGone> {
    let request = &plan.request;
    let id = shape.id;
    let mut events = Events { writer, seq: 0 };
    let in_progress = response_object(shape, "in_progress", None, None);
    let created = JsonObject::new().raw("response", &in_progress);
    events.send("response.created", created).await?;
    let progress = JsonObject::new().raw("response", &in_progress);
    events.send("response.in_progress", progress).await?;
    let item = JsonObject::new()
        .object("item", output_item(id, None))
        .field("output_index", &0);
    events.send("response.output_item.added", item).await?;
    let part = text_ids(id)
        .field("output_index", &0)
        .object("part", output_part(""));
    events.send("response.content_part.added", part).await?;
    events.writer.during(pacer.first_token()).await?;
    let mut text = String::new();
    for step in 0..=request.tokens_per_choice {
        if plan.cut_after_tokens == Some(step) {
            events.writer.abort_connection().await?;
            return Ok(Outcome::Cut);
        }
        if plan.midstream_error_after == Some(step) {
            let error = JsonObject::new()
                .field("code", "server_error")
                .field("message", MIDSTREAM_ERROR_MESSAGE)
                .null("param");
            events.send("error", error).await?;
            return Ok(Outcome::MidstreamError);
        }
        if step == request.tokens_per_choice {
            break;
        }
        if step > 0 {
            events.writer.during(pacer.next_token()).await?;
        }
        let token = token_text(request.seed, 0, step);
        text.push_str(token);
        tracker.add_completion_tokens(1);
        let delta = text_ids(id)
            .field("delta", token)
            .raw("logprobs", "[]")
            .field("output_index", &0);
        events.send("response.output_text.delta", delta).await?;
    }
    let done = text_ids(id)
        .raw("logprobs", "[]")
        .field("output_index", &0)
        .field("text", &text);
    events.send("response.output_text.done", done).await?;
    let part = text_ids(id)
        .field("output_index", &0)
        .object("part", output_part(&text));
    events.send("response.content_part.done", part).await?;
    let item = JsonObject::new()
        .object("item", output_item(id, Some(&text)))
        .field("output_index", &0);
    events.send("response.output_item.done", item).await?;
    let usage = (request.prompt_tokens, request.tokens_per_choice);
    let body = response_object(shape, "completed", Some(&text), Some(usage));
    if shape.fields.store {
        store.put(id, body.clone());
    }
    let completed = JsonObject::new().raw("response", &body);
    events.send("response.completed", completed).await?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_object_has_usage_and_store_round_trips() {
        let fields = ResponsesFields {
            store: true,
            ..ResponsesFields::default()
        };
        let shape = Shape {
            id: "resp_1",
            created: 5,
            model: "m",
            fields: &fields,
        };
        let v: Value = serde_json::from_str(&response_object(
            &shape,
            "completed",
            Some("hi"),
            Some((3, 2)),
        ))
        .unwrap();
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["output"][0]["content"][0]["text"], "hi");
        let store = Store::default();
        store.put("resp_1", "{}".into());
        assert!(store.get("resp_1").is_some());
        assert!(store.remove("resp_1") && store.get("resp_1").is_none());
        let (status, body) = not_found("resp_x");
        assert_eq!(status, 404);
        assert!(body.contains("Response with id 'resp_x' not found."));
    }
}
