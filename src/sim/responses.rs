//! Response bodies in each flavour's exact shape: SSE chunks, non-streaming JSON, errors.
//!
//! Shapes follow `/work/shared/corpus` (vLLM 0.11 captures, trtllm-serve code): vLLM chat
//! chunks are dumped with `exclude_unset`, completion chunks with every field, and
//! trtllm-serve chat chunks with `exclude_none`.

use bytes::Bytes;
use http::StatusCode;

use super::json::{json_array, python_json_string, JsonObject};
use super::request::{Endpoint, InferenceRequest};
use super::Flavour;

/// Token counts for a `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// `usage` as found in stream chunks.
    fn chunk_json(self, flavour: Flavour) -> JsonObject {
        let usage = JsonObject::new()
            .field("prompt_tokens", &self.prompt_tokens)
            .field(
                "total_tokens",
                &(self.prompt_tokens + self.completion_tokens),
            )
            .field("completion_tokens", &self.completion_tokens);
        match flavour {
            Flavour::Trtllm => usage.object(
                "prompt_tokens_details",
                JsonObject::new().field("cached_tokens", &0),
            ),
            _ => usage,
        }
    }

    /// `usage` as found in non-streaming responses.
    fn response_json(self, flavour: Flavour) -> JsonObject {
        match flavour {
            Flavour::Trtllm => self.chunk_json(flavour),
            _ => self.chunk_json(flavour).null("prompt_tokens_details"),
        }
    }
}

/// Builds the SSE events of one streaming response.
#[derive(Debug, Clone)]
pub struct StreamShape {
    pub flavour: Flavour,
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// One SSE event. trtllm-serve ends its role chunk with `} \n\n` (a stray space).
fn event(json: &str, trailing_space: bool) -> Bytes {
    let space = if trailing_space { " " } else { "" };
    Bytes::from(format!("data: {json}{space}\n\n"))
}

impl StreamShape {
    fn object_name(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Completions => "text_completion",
            _ => "chat.completion.chunk",
        }
    }

    fn header(&self) -> JsonObject {
        JsonObject::new()
            .field("id", &self.id)
            .field("object", self.object_name())
            .field("created", &self.created)
            .field("model", &self.model)
    }

    /// Adds the per-chunk usage: the running totals, or `"usage":null` where the
    /// upstream serialises every field (completion streams).
    fn with_usage(&self, chunk: JsonObject, usage: Option<Usage>) -> JsonObject {
        match usage {
            Some(usage) => chunk.object("usage", usage.chunk_json(self.flavour)),
            None if self.endpoint == Endpoint::Completions => chunk.null("usage"),
            None => chunk,
        }
    }

    /// The chat role chunk, sent once per choice before any content.
    pub fn role_chunk(&self, choice: u32, usage: Option<Usage>) -> Bytes {
        let delta = match self.flavour {
            Flavour::Trtllm => JsonObject::new().field("role", "assistant"),
            _ => JsonObject::new()
                .field("role", "assistant")
                .field("content", ""),
        };
        let mut choice_json = JsonObject::new()
            .field("index", &choice)
            .object("delta", delta);
        if self.flavour != Flavour::Trtllm {
            choice_json = choice_json.null("logprobs").null("finish_reason");
        }
        let chunk = self
            .header()
            .raw("choices", &json_array([choice_json.finish()]));
        let chunk = self.with_usage(chunk, usage);
        match self.flavour {
            Flavour::Trtllm => event(&chunk.finish(), true),
            _ => event(&chunk.null("prompt_token_ids").finish(), false),
        }
    }

    /// A content chunk (`finish_reason` `None`) or the final chunk of a choice.
    pub fn content_chunk(
        &self,
        choice: u32,
        text: &str,
        finish_reason: Option<&str>,
        usage: Option<Usage>,
    ) -> Bytes {
        let choice_json = match (self.endpoint, self.flavour) {
            (Endpoint::Completions, Flavour::Trtllm) => JsonObject::new()
                .field("index", &choice)
                .field("text", text)
                .null("token_ids")
                .null("logprobs")
                .field("finish_reason", &finish_reason)
                .null("stop_reason")
                .null("avg_decoded_tokens_per_iter"),
            (Endpoint::Completions, _) => JsonObject::new()
                .field("index", &choice)
                .field("text", text)
                .null("logprobs")
                .field("finish_reason", &finish_reason)
                .null("stop_reason"),
            (_, Flavour::Trtllm) => JsonObject::new()
                .field("index", &choice)
                .object(
                    "delta",
                    JsonObject::new()
                        .field("content", text)
                        .field("reasoning_content", ""),
                )
                .field_if(finish_reason.is_some(), "finish_reason", &finish_reason),
            (_, _) => {
                let with_finish = JsonObject::new()
                    .field("index", &choice)
                    .object("delta", JsonObject::new().field("content", text))
                    .null("logprobs")
                    .field("finish_reason", &finish_reason);
                let with_stop = match finish_reason {
                    Some(_) => with_finish.null("stop_reason"),
                    None => with_finish,
                };
                with_stop.null("token_ids")
            }
        };
        let chunk = self
            .header()
            .raw("choices", &json_array([choice_json.finish()]));
        event(&self.with_usage(chunk, usage).finish(), false)
    }

    /// The trailing `"choices":[]` chunk with the totals.
    pub fn usage_chunk(&self, usage: Usage) -> Bytes {
        let chunk = self
            .header()
            .raw("choices", "[]")
            .object("usage", usage.chunk_json(self.flavour));
        event(&chunk.finish(), false)
    }
}

/// The end-of-stream sentinel.
pub fn done_event() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// vLLM's mid-stream error event, written with Python `json.dumps` separators.
pub fn midstream_error_event(message: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"error\": {{\"message\": {}, \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}}}\n\n",
        python_json_string(message)
    ))
}

/// Generated output handed to the non-streaming builders.
#[derive(Debug, Clone)]
pub struct Completed<'a> {
    pub request: &'a InferenceRequest,
    pub id: &'a str,
    pub created: u64,
    /// Text of each choice, in index order.
    pub texts: &'a [String],
}

impl Completed<'_> {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.request.prompt_tokens,
            completion_tokens: self.request.tokens_per_choice * u64::from(self.request.choices),
        }
    }

    fn header(&self, object: &str) -> JsonObject {
        JsonObject::new()
            .field("id", self.id)
            .field("object", object)
            .field("created", &self.created)
            .field("model", &self.request.response_model)
    }
}

/// Non-streaming `chat.completion` body.
pub fn chat_response(flavour: Flavour, done: &Completed<'_>) -> String {
    let finish = done.request.finish_reason;
    let choices = done.texts.iter().enumerate().map(|(index, text)| {
        let choice = JsonObject::new().field("index", &index);
        match flavour {
            Flavour::Trtllm => choice
                .object(
                    "message",
                    JsonObject::new()
                        .field("role", "assistant")
                        .field("content", text)
                        .field("reasoning_content", "")
                        .raw("tool_calls", "[]"),
                )
                .null("logprobs")
                .field("finish_reason", finish)
                .null("stop_reason")
                .null("disaggregated_params")
                .null("avg_decoded_tokens_per_iter"),
            _ => choice
                .object(
                    "message",
                    JsonObject::new()
                        .field("role", "assistant")
                        .field("content", text)
                        .null("refusal")
                        .null("annotations")
                        .null("audio")
                        .null("function_call")
                        .raw("tool_calls", "[]")
                        .null("reasoning_content"),
                )
                .null("logprobs")
                .field("finish_reason", finish)
                .null("stop_reason")
                .null("token_ids"),
        }
        .finish()
    });
    let body = done
        .header("chat.completion")
        .raw("choices", &json_array(choices));
    match flavour {
        Flavour::Trtllm => body
            .object("usage", done.usage().response_json(flavour))
            .null("prompt_token_ids"),
        _ => body
            .null("service_tier")
            .null("system_fingerprint")
            .object("usage", done.usage().response_json(flavour))
            .null("prompt_logprobs")
            .null("prompt_token_ids")
            .null("kv_transfer_params"),
    }
    .finish()
}

/// Non-streaming `text_completion` body.
pub fn completion_response(flavour: Flavour, done: &Completed<'_>) -> String {
    let finish = done.request.finish_reason;
    let choices = done.texts.iter().enumerate().map(|(index, text)| {
        let choice = JsonObject::new().field("index", &index).field("text", text);
        match flavour {
            Flavour::Trtllm => choice
                .null("token_ids")
                .null("logprobs")
                .null("context_logits")
                .field("finish_reason", finish)
                .null("stop_reason")
                .null("disaggregated_params")
                .field("avg_decoded_tokens_per_iter", &1.0),
            _ => choice
                .null("logprobs")
                .field("finish_reason", finish)
                .null("stop_reason")
                .null("token_ids")
                .null("prompt_logprobs")
                .null("prompt_token_ids"),
        }
        .finish()
    });
    let body = done
        .header("text_completion")
        .raw("choices", &json_array(choices));
    match flavour {
        Flavour::Trtllm => body
            .object("usage", done.usage().response_json(flavour))
            .null("prompt_token_ids"),
        _ => body
            .null("service_tier")
            .null("system_fingerprint")
            .object("usage", done.usage().response_json(flavour))
            .null("kv_transfer_params"),
    }
    .finish()
}

/// `/v1/embeddings` body (vLLM field order).
pub fn embedding_response(
    flavour: Flavour,
    id: &str,
    created: u64,
    model: &str,
    vectors: &[Vec<f32>],
    prompt_tokens: u64,
) -> String {
    let data = vectors.iter().enumerate().map(|(index, vector)| {
        JsonObject::new()
            .field("index", &index)
            .field("object", "embedding")
            .field("embedding", vector)
            .finish()
    });
    let usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
    }
    .response_json(flavour);
    JsonObject::new()
        .field("id", id)
        .field("object", "list")
        .field("created", &created)
        .field("model", model)
        .raw("data", &json_array(data))
        .object("usage", usage)
        .finish()
}

/// `/v1/models` body, vLLM's card shape.
pub fn models_response(
    flavour: Flavour,
    names: &[String],
    created: u64,
    max_model_len: u64,
) -> String {
    let owner = match flavour {
        Flavour::Vllm => "vllm",
        Flavour::Trtllm => "tensorrt_llm",
        Flavour::TritonOpenai => "Triton Inference Server",
    };
    let cards = names.iter().map(|name| {
        JsonObject::new()
            .field("id", name)
            .field("object", "model")
            .field("created", &created)
            .field("owned_by", owner)
            .field("root", name)
            .null("parent")
            .field("max_model_len", &max_model_len)
            .raw("permission", "[]")
            .finish()
    });
    JsonObject::new()
        .field("object", "list")
        .raw("data", &json_array(cards))
        .finish()
}

/// Every error the simulator answers with, before any body byte is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorCase {
    /// Request validation (bad JSON, bad field, Content-Type): 400.
    Invalid(String),
    /// The requested model is not served.
    UnknownModel(String),
    /// An injected fault.
    Injected {
        status: StatusCode,
        empty_body: bool,
    },
}

/// vLLM's `type` for an error status: an exception class name where vLLM has one.
fn vllm_error_type(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "BadRequestError".into(),
        404 => "NotFoundError".into(),
        500 => "InternalServerError".into(),
        501 => "NotImplementedError".into(),
        _ => status.canonical_reason().unwrap_or("Error").to_owned(),
    }
}

/// Status and body (None = empty) of an error in `flavour`'s shape.
pub fn error_response(flavour: Flavour, case: &ErrorCase) -> (StatusCode, Option<String>) {
    match (flavour, case) {
        (Flavour::Vllm, ErrorCase::Invalid(message)) => (
            StatusCode::BAD_REQUEST,
            Some(vllm_error(message, "Bad Request", None, 400)),
        ),
        (Flavour::Vllm, ErrorCase::UnknownModel(name)) => (
            StatusCode::NOT_FOUND,
            Some(vllm_error(
                &format!("The model `{name}` does not exist."),
                "NotFoundError",
                Some("model"),
                404,
            )),
        ),
        (Flavour::Trtllm, ErrorCase::Invalid(message) | ErrorCase::UnknownModel(message)) => (
            StatusCode::BAD_REQUEST,
            Some(JsonObject::new().field("error", message).finish()),
        ),
        (Flavour::TritonOpenai, ErrorCase::Invalid(message)) => {
            (StatusCode::BAD_REQUEST, Some(detail(message)))
        }
        (Flavour::TritonOpenai, ErrorCase::UnknownModel(name)) => (
            StatusCode::BAD_REQUEST,
            Some(detail(&format!("Unknown model: {name}"))),
        ),
        (
            _,
            ErrorCase::Injected {
                status,
                empty_body: true,
            },
        ) => (*status, None),
        (_, ErrorCase::Injected { status, .. }) => {
            let message = format!("Simulated failure (injected status {})", status.as_u16());
            let body = match flavour {
                Flavour::Vllm => {
                    vllm_error(&message, &vllm_error_type(*status), None, status.as_u16())
                }
                Flavour::Trtllm => JsonObject::new()
                    .field("object", "error")
                    .field("message", &message)
                    .field("type", &vllm_error_type(*status))
                    .null("param")
                    .field("code", &status.as_u16())
                    .finish(),
                Flavour::TritonOpenai => detail(&message),
            };
            (*status, Some(body))
        }
    }
}

/// vLLM ≥ 0.10.1 error: `{"error":{"message","type","param","code"}}`.
fn vllm_error(message: &str, kind: &str, param: Option<&str>, code: u16) -> String {
    let inner = JsonObject::new()
        .field("message", message)
        .field("type", kind)
        .field("param", &param)
        .field("code", &code);
    JsonObject::new().object("error", inner).finish()
}

/// FastAPI's `{"detail": ...}` error.
pub fn detail(message: &str) -> String {
    JsonObject::new().field("detail", message).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::request::UsageSwitch;
    use serde_json::{json, Value};

    fn shape(flavour: Flavour, endpoint: Endpoint) -> StreamShape {
        StreamShape {
            flavour,
            endpoint,
            id: "chatcmpl-abc".into(),
            created: 1,
            model: "m".into(),
        }
    }

    fn parse_event(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap_or_default();
        let json = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_default();
        serde_json::from_str(json.trim_end()).unwrap_or(Value::Null)
    }

    #[test]
    fn vllm_chat_chunks_match_the_0_11_capture() {
        let s = shape(Flavour::Vllm, Endpoint::Chat);
        assert_eq!(
            s.role_chunk(0, None),
            Bytes::from(
                "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"prompt_token_ids\":null}\n\n"
            )
        );
        assert_eq!(
            s.content_chunk(0, " café", None, None),
            Bytes::from(
                "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" café\"},\"logprobs\":null,\"finish_reason\":null,\"token_ids\":null}]}\n\n"
            )
        );
        let finish = parse_event(&s.content_chunk(0, "", Some("stop"), None));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["stop_reason"], Value::Null);
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 10,
        };
        assert_eq!(
            s.usage_chunk(usage),
            Bytes::from(
                "data: {\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":17,\"completion_tokens\":10}}\n\n"
            )
        );
    }

    #[test]
    fn trtllm_role_chunk_has_trailing_space_and_no_content() {
        let s = shape(Flavour::Trtllm, Endpoint::Chat);
        let role = s.role_chunk(0, None);
        assert!(role.ends_with(b"} \n\n"));
        assert_eq!(
            parse_event(&role)["choices"][0]["delta"],
            json!({"role": "assistant"})
        );
        let token = parse_event(&s.content_chunk(0, " x", None, None));
        assert_eq!(
            token["choices"][0],
            json!({"index": 0, "delta": {"content": " x", "reasoning_content": ""}})
        );
        let usage = parse_event(&s.usage_chunk(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
        }));
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn completion_chunks_carry_usage_null_or_running_usage() {
        let s = shape(Flavour::Vllm, Endpoint::Completions);
        let plain = parse_event(&s.content_chunk(0, " a", None, None));
        assert_eq!(plain["object"], "text_completion");
        assert_eq!(plain["usage"], Value::Null);
        assert!(plain.as_object().is_some_and(|o| o.contains_key("usage")));
        assert_eq!(plain["choices"][0]["stop_reason"], Value::Null);
        let running = Usage {
            prompt_tokens: 2,
            completion_tokens: 1,
        };
        let continuous = parse_event(&s.content_chunk(0, " a", None, Some(running)));
        assert_eq!(continuous["usage"]["total_tokens"], 3);
    }

    #[test]
    fn midstream_error_is_json_dumps_style() {
        let event = midstream_error_event("boom é");
        assert_eq!(
            event,
            Bytes::from(
                "data: {\"error\": {\"message\": \"boom \\u00e9\", \"type\": \"BadRequestError\", \"param\": null, \"code\": 400}}\n\n"
            )
        );
    }

    #[test]
    fn error_shapes_per_flavour() {
        let (status, body) = error_response(Flavour::Vllm, &ErrorCase::UnknownModel("x".into()));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body.as_deref(),
            Some("{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"NotFoundError\",\"param\":\"model\",\"code\":404}}")
        );
        let (status, body) =
            error_response(Flavour::TritonOpenai, &ErrorCase::UnknownModel("x".into()));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body.as_deref(), Some("{\"detail\":\"Unknown model: x\"}"));
        let engine_death = ErrorCase::Injected {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            empty_body: true,
        };
        assert_eq!(
            error_response(Flavour::Vllm, &engine_death),
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        );
        let injected = ErrorCase::Injected {
            status: StatusCode::SERVICE_UNAVAILABLE,
            empty_body: false,
        };
        let (_, body) = error_response(Flavour::Trtllm, &injected);
        let parsed: Value = serde_json::from_str(body.as_deref().unwrap_or("")).unwrap_or_default();
        assert_eq!(parsed["object"], "error");
        assert_eq!(parsed["code"], 503);
    }

    #[test]
    fn non_streaming_shapes() {
        let request = InferenceRequest {
            endpoint: Endpoint::Chat,
            response_model: "m".into(),
            stream: false,
            usage: UsageSwitch::default(),
            choices: 2,
            tokens_per_choice: 3,
            finish_reason: "length",
            prompt_tokens: 5,
            seed: 0,
            embedding_inputs: Vec::new(),
            tool_call: None,
            responses: None,
        };
        let texts = vec![" a b c".to_owned(), " d e f".to_owned()];
        let done = Completed {
            request: &request,
            id: "chatcmpl-1",
            created: 9,
            texts: &texts,
        };
        let chat: Value =
            serde_json::from_str(&chat_response(Flavour::Vllm, &done)).unwrap_or_default();
        assert_eq!(chat["choices"][1]["message"]["content"], " d e f");
        assert_eq!(chat["choices"][0]["finish_reason"], "length");
        assert_eq!(chat["usage"]["completion_tokens"], 6);
        assert_eq!(chat["usage"]["total_tokens"], 11);
        let completion: Value =
            serde_json::from_str(&completion_response(Flavour::Trtllm, &done)).unwrap_or_default();
        assert_eq!(completion["object"], "text_completion");
        assert_eq!(
            completion["usage"]["prompt_tokens_details"]["cached_tokens"],
            0
        );
        let embeddings: Value = serde_json::from_str(&embedding_response(
            Flavour::Vllm,
            "embd-1",
            9,
            "m",
            &[vec![0.5, -0.5]],
            4,
        ))
        .unwrap_or_default();
        assert_eq!(embeddings["data"][0]["embedding"], json!([0.5, -0.5]));
        assert_eq!(embeddings["usage"]["total_tokens"], 4);
    }
}
