//! vLLM's Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`; vLLM ≥ 0.12,
//! `vllm/entrypoints/anthropic/`, UPSTREAMS.md §11) as it looks on the wire: events dumped with
//! pydantic's `exclude_unset` in field-declaration order, no `ping`, no `[DONE]`, usage in
//! `message_start` and `message_delta`, errors as `{"type":"error","error":{"type","message"}}`.
//!
//! A request with `tools` and `tool_choice` `{"type":"any"}` or `{"type":"tool","name":…}`
//! is answered with a `tool_use` block whose input `{"query": "<generated text>"}` streams
//! as one `input_json_delta` per token.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use super::generate::{chat_prompt_tokens, count_words, token_text};
use super::json::{json_array, JsonObject};
use super::request::InferenceRequest;
use super::responses::ErrorCase;
use super::state::{Outcome, RequestTracker};
use super::stream::{ClientGone, EventWriter, Pacer, StreamPlan, MIDSTREAM_ERROR_MESSAGE};

/// Prompt tokens of a Messages body: `messages` like chat, plus the `system` prompt
/// (a string or text blocks).
pub fn prompt_tokens(fields: &Map<String, Value>) -> Option<u64> {
    let Some(Value::Array(messages)) = fields.get("messages") else {
        return None;
    };
    let system = match fields.get("system") {
        Some(Value::String(text)) => count_words(text),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .map(count_words)
            .sum(),
        _ => 0,
    };
    Some(chat_prompt_tokens(messages) + system)
}

/// The tool the request forces (`tool_choice` `any`: the first tool; `tool`: the named one).
pub fn forced_tool(fields: &Map<String, Value>) -> Option<String> {
    let tools = fields.get("tools")?.as_array()?;
    let choice = fields.get("tool_choice")?;
    let name = match choice.get("type")?.as_str()? {
        "any" => tools.first()?.get("name")?.as_str()?,
        "tool" => choice.get("name")?.as_str()?,
        _ => return None,
    };
    Some(name.to_owned())
}

/// `stop_reason` for the OpenAI finish reason vLLM's converter maps.
fn stop_reason(request: &InferenceRequest) -> &'static str {
    match (request.tool_call.is_some(), request.finish_reason) {
        (true, _) => "tool_use",
        (false, "length") => "max_tokens",
        (false, _) => "end_turn",
    }
}

/// The tool call's id: vLLM's chat tool parsers' `chatcmpl-tool-<hex>`.
fn tool_id(message_id: &str) -> String {
    format!(
        "chatcmpl-tool-{}",
        message_id.trim_start_matches("chatcmpl-")
    )
}

fn usage(input: u64, output: u64) -> JsonObject {
    JsonObject::new()
        .field("input_tokens", &input)
        .field("output_tokens", &output)
}

/// The pieces of the tool input JSON, one per token between an opening and a closing piece.
fn tool_json_pieces(request: &InferenceRequest) -> Vec<String> {
    let mut pieces = vec![r#"{"query": ""#.to_owned()];
    for step in 0..request.tokens_per_choice {
        let text = serde_json::to_string(token_text(request.seed, 0, step)).unwrap_or_default();
        pieces.push(text.trim_matches('"').to_owned());
    }
    pieces.push(r#""}"#.to_owned());
    pieces
}

/// The non-streaming answer (`model_dump(exclude_none=True)`).
pub fn message_response(request: &InferenceRequest, id: &str, text: &str) -> String {
    let block = match &request.tool_call {
        Some(name) => {
            let input: Value =
                serde_json::from_str(&tool_json_pieces(request).concat()).unwrap_or(Value::Null);
            JsonObject::new()
                .field("type", "tool_use")
                .field("id", &tool_id(id))
                .field("name", name)
                .field("input", &input)
        }
        None => JsonObject::new().field("type", "text").field("text", text),
    };
    JsonObject::new()
        .field("id", id)
        .field("type", "message")
        .field("role", "assistant")
        .raw("content", &json_array([block.finish()]))
        .field("model", &request.response_model)
        .field("stop_reason", stop_reason(request))
        .object(
            "usage",
            usage(request.prompt_tokens, request.tokens_per_choice),
        )
        .finish()
}

/// `count_tokens`' answer.
pub fn count_tokens_response(input_tokens: u64) -> String {
    JsonObject::new()
        .field("input_tokens", &input_tokens)
        .object(
            "context_management",
            JsonObject::new().field("original_input_tokens", &input_tokens),
        )
        .finish()
}

/// An error before any byte of the answer, in the Anthropic shape vLLM's router writes
/// (`type` is the OpenAI error's type it translated).
pub fn error_response(case: &ErrorCase) -> (StatusCode, Option<String>) {
    let (status, kind, message) = match case {
        ErrorCase::Invalid(message) => {
            (StatusCode::BAD_REQUEST, "BadRequestError", message.clone())
        }
        ErrorCase::UnknownModel(name) => (
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The model `{name}` does not exist."),
        ),
        ErrorCase::Injected {
            status,
            empty_body: true,
        } => return (*status, None),
        ErrorCase::Injected { status, .. } => (
            *status,
            "InternalServerError",
            format!("Simulated failure (injected status {})", status.as_u16()),
        ),
    };
    (status, Some(error_json(kind, &message)))
}

fn error_json(kind: &str, message: &str) -> String {
    JsonObject::new()
        .field("type", "error")
        .object(
            "error",
            JsonObject::new()
                .field("type", kind)
                .field("message", message),
        )
        .finish()
}

fn event(kind: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn block_delta(index: u32, delta: JsonObject) -> Bytes {
    let data = JsonObject::new()
        .field("type", "content_block_delta")
        .object("delta", delta)
        .field("index", &index)
        .finish();
    event("content_block_delta", &data)
}

/// `message_start` and the first block's `content_block_start`.
fn opening_events(plan: &StreamPlan) -> (Bytes, Bytes) {
    let (request, shape) = (&plan.request, &plan.shape);
    let message = JsonObject::new()
        .field("id", &shape.id)
        .raw("content", "[]")
        .field("model", &shape.model)
        .null("stop_reason")
        .null("stop_sequence")
        .object("usage", usage(request.prompt_tokens, 0));
    let start = JsonObject::new()
        .field("type", "message_start")
        .object("message", message)
        .finish();
    let block = match &request.tool_call {
        Some(name) => JsonObject::new()
            .field("type", "tool_use")
            .field("id", &tool_id(&shape.id))
            .field("name", name)
            .raw("input", "{}"),
        None => JsonObject::new().field("type", "text").field("text", ""),
    };
    let block = JsonObject::new()
        .field("type", "content_block_start")
        .object("content_block", block)
        .field("index", &0)
        .finish();
    (
        event("message_start", &start),
        event("content_block_start", &block),
    )
}

/// Streams one Messages answer with the plan's timing and faults (cut connection, the
/// converter's `error` event, which vLLM sends with no `message_stop` after it).
pub async fn generate(
    plan: &StreamPlan,
    pacer: &mut Pacer,
    tracker: &mut RequestTracker,
    writer: &mut EventWriter,
) -> Result<Outcome, ClientGone> {
    let request = &plan.request;
    let (start, block) = opening_events(plan);
    writer.send(start).await?;
    writer.during(pacer.first_token()).await?;
    let pieces = match &request.tool_call {
        Some(_) => tool_json_pieces(request),
        None => Vec::new(),
    };
    let mut block_started = false;
    let mut sent_tokens = 0u64;
    for step in 0..=request.tokens_per_choice {
        if plan.cut_after_tokens == Some(step) {
            writer.abort_connection().await?;
            return Ok(Outcome::Cut);
        }
        if plan.midstream_error_after == Some(step) {
            let error = error_json("internal_error", MIDSTREAM_ERROR_MESSAGE);
            writer.send(event("error", &error)).await?;
            return Ok(Outcome::MidstreamError);
        }
        if step == request.tokens_per_choice {
            break;
        }
        if step > 0 {
            writer.during(pacer.next_token()).await?;
        }
        if !block_started {
            writer.send(block.clone()).await?;
            if let Some(opening) = pieces.first() {
                writer.send(json_delta(opening)).await?;
            }
            block_started = true;
        }
        sent_tokens += 1;
        tracker.add_completion_tokens(1);
        let delta = match pieces.get(step as usize + 1) {
            Some(piece) => json_delta(piece),
            None => block_delta(
                0,
                JsonObject::new()
                    .field("type", "text_delta")
                    .field("text", token_text(request.seed, 0, step)),
            ),
        };
        writer.send(delta).await?;
    }
    if block_started {
        if let Some(closing) = pieces.last() {
            writer.send(json_delta(closing)).await?;
        }
        let stop = r#"{"type":"content_block_stop","index":0}"#;
        writer.send(event("content_block_stop", stop)).await?;
    }
    let delta = JsonObject::new()
        .field("type", "message_delta")
        .object(
            "delta",
            JsonObject::new().field("stop_reason", stop_reason(request)),
        )
        .object("usage", usage(request.prompt_tokens, sent_tokens))
        .finish();
    writer.send(event("message_delta", &delta)).await?;
    writer
        .send(event("message_stop", r#"{"type":"message_stop"}"#))
        .await?;
    Ok(Outcome::Ok)
}

fn json_delta(piece: &str) -> Bytes {
    block_delta(
        0,
        JsonObject::new()
            .field("type", "input_json_delta")
            .field("partial_json", piece),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn system_prompt_counts_and_tool_choice_forces_a_tool() {
        let f = fields(json!({
            "messages": [{"role": "user", "content": "one two three"}],
            "system": [{"type": "text", "text": "be brief"}],
            "tools": [{"name": "get_weather", "input_schema": {}}, {"name": "other", "input_schema": {}}],
            "tool_choice": {"type": "any"}
        }));
        assert_eq!(
            prompt_tokens(&f),
            Some(chat_prompt_tokens(&[json!({"content": "one two three"})]) + 2)
        );
        assert_eq!(forced_tool(&f).as_deref(), Some("get_weather"));
        let mut auto = f.clone();
        auto.insert("tool_choice".into(), json!({"type": "auto"}));
        assert_eq!(forced_tool(&auto), None);
        auto.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": "other"}),
        );
        assert_eq!(forced_tool(&auto).as_deref(), Some("other"));
    }

    #[test]
    fn errors_have_anthropic_shape() {
        let (status, body) = error_response(&ErrorCase::UnknownModel("m".into()));
        let v: Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "NotFoundError");
    }
}
