//! Parsing and validating completion / embedding request bodies, per upstream flavour.

use serde_json::{Map, Value};

use super::generate::{chat_prompt_tokens, prompt_items};
use super::lax;
use super::Flavour;

/// vLLM's `max_model_len` as reported by `/v1/models`; larger `max_tokens` is refused.
pub const MAX_MODEL_LEN: u64 = 32768;
/// Upper bound on `n`, to keep a typo from generating gigabytes.
const MAX_CHOICES: u64 = 128;

/// The inference routes the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// Anthropic's `/v1/messages` (vLLM only).
    Messages,
    /// Anthropic's `/v1/messages/count_tokens` (vLLM only).
    CountTokens,
    /// OpenAI's `/v1/responses` (vLLM only).
    Responses,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            "/v1/messages" => Some(Self::Messages),
            "/v1/messages/count_tokens" => Some(Self::CountTokens),
            "/v1/responses" => Some(Self::Responses),
            _ => None,
        }
    }

    /// Anthropic's surface: its own request fields, events and error shape.
    pub fn is_anthropic(self) -> bool {
        matches!(self, Self::Messages | Self::CountTokens)
    }

    /// The pydantic model name upstream servers mention in validation errors.
    fn schema_name(self) -> &'static str {
        match self {
            Self::Chat => "ChatCompletionRequest",
            Self::Completions => "CompletionRequest",
            Self::Embeddings => "EmbeddingRequest",
            Self::Messages => "AnthropicMessagesRequest",
            Self::CountTokens => "AnthropicCountTokensRequest",
            Self::Responses => "ResponsesRequest",
        }
    }
}

/// Which usage the stream carries (UPSTREAMS.md §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageSwitch {
    /// A final `"choices":[]` chunk with the totals.
    pub final_chunk: bool,
    /// `usage` on every chunk (`continuous_usage_stats`).
    pub every_chunk: bool,
}

/// The usage switch table: vLLM and trtllm-serve default `include_usage` to true once
/// `stream_options` is present; Triton's OpenAI frontend defaults it to false.
pub fn usage_switch(flavour: Flavour, stream_options: Option<&Value>) -> UsageSwitch {
    let Some(Value::Object(options)) = stream_options else {
        return UsageSwitch::default();
    };
    let include_usage = match (flavour, options.get("include_usage")) {
        (Flavour::TritonOpenai, value) => value.and_then(lax::bool) == Some(true),
        // pydantic default True when absent; an explicit null or false switches it off.
        (_, None) => true,
        (_, Some(value)) => lax::bool(value) == Some(true),
    };
    let continuous = flavour != Flavour::TritonOpenai
        && options.get("continuous_usage_stats").and_then(lax::bool) == Some(true);
    UsageSwitch {
        final_chunk: include_usage,
        every_chunk: include_usage && continuous,
    }
}

/// What a request asked for, pulled leniently from the body for the request record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestSummary {
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage` as sent; `None` when absent.
    pub include_usage: Option<Value>,
    pub max_tokens: Option<u64>,
}

impl RequestSummary {
    pub fn from_body(body: &Value) -> Self {
        Self {
            model: body.get("model").and_then(Value::as_str).map(str::to_owned),
            stream: body.get("stream").and_then(lax::bool) == Some(true),
            include_usage: body
                .get("stream_options")
                .and_then(|options| options.get("include_usage"))
                .cloned(),
            max_tokens: ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|name| {
                    body.get(*name)
                        .and_then(lax::int)
                        .and_then(|n| u64::try_from(n).ok())
                }),
        }
    }
}

/// A validated request, ready to be answered.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    pub endpoint: Endpoint,
    /// The model name put in the response.
    pub response_model: String,
    pub stream: bool,
    pub usage: UsageSwitch,
    /// Number of choices in the response: prompts × `n` for completions.
    pub choices: u32,
    /// Tokens generated per choice.
    pub tokens_per_choice: u64,
    /// `"length"` when `max_tokens` cut the text, else `"stop"`.
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub seed: u64,
    /// Embeddings only: one fingerprint per input.
    pub embedding_inputs: Vec<u64>,
    /// Messages only: the tool the request forces (answered with a `tool_use` block).
    pub tool_call: Option<String>,
    /// Responses only: its own fields (`previous_response_id`, `store`, ...).
    pub responses: Option<super::responses_api::ResponsesFields>,
}

/// Settings from the command line and per-request headers that shape generation.
#[derive(Debug, Clone, Copy)]
pub struct GenerationDefaults {
    /// Completion tokens when the request gives no `max_tokens`.
    pub default_tokens: u64,
    /// `x-sim-tokens`: the "natural" length of the answer for this request.
    pub tokens_override: Option<u64>,
    pub seed: u64,
}

/// Why a request is refused before generation.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// 400 in the flavour's validation-error shape.
    Invalid(String),
    /// The requested model is not served.
    UnknownModel(String),
}

type Result<T> = std::result::Result<T, RequestError>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(RequestError::Invalid(message.into()))
}

/// Decodes a request body as JSON.
pub fn decode_body(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| RequestError::Invalid(format!("JSON decode error: {e}")))
}

/// Validates the decoded `body` as a request to `endpoint`, the way `flavour` would.
#[allow(clippy::too_many_lines)] // the simulator is a test tool (outside the 80-line rule)
pub fn parse_request(
    flavour: Flavour,
    endpoint: Endpoint,
    body: &Value,
    served_models: &[String],
    defaults: GenerationDefaults,
) -> Result<InferenceRequest> {
    let Value::Object(fields) = body else {
        return invalid("Input should be a valid dictionary or object to extract fields from");
    };
    if flavour == Flavour::Trtllm {
        reject_unknown_fields(endpoint, fields)?;
    }
    let response_model = resolve_model(flavour, fields.get("model"), served_models)?;
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(value) => match lax::bool(value) {
            Some(flag) => flag,
            None => return invalid("stream: Input should be a valid boolean"),
        },
    };
    // Anthropic's schema has no `stream_options` (pydantic ignores it).
    let stream_options = fields
        .get("stream_options")
        .filter(|v| !v.is_null() && !endpoint.is_anthropic());
    // Upstream checks `if data.get("stream_options") and not data.get("stream")`:
    // Python truthiness, so an empty object passes.
    let options_truthy =
        stream_options.is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()));
    if options_truthy && !stream {
        return invalid("Stream options can only be defined when `stream=True`.");
    }
    if stream_options.is_some_and(|v| !v.is_object()) {
        return invalid("stream_options: Input should be a valid dictionary");
    }
    if stream && endpoint == Endpoint::Embeddings {
        return invalid("stream: embeddings cannot be streamed");
    }
    let seed = match fields.get("seed") {
        None | Some(Value::Null) => defaults.seed,
        Some(value) => match lax::int(value) {
            Some(seed) => seed as u64,
            None => return invalid("seed: Input should be a valid integer"),
        },
    };

    let (prompt_tokens, prompts, embedding_inputs) = match endpoint {
        Endpoint::Chat => {
            let Some(Value::Array(messages)) = fields.get("messages") else {
                return invalid("messages: Field required (a list of messages)");
            };
            (chat_prompt_tokens(messages), 1, Vec::new())
        }
        Endpoint::Completions => {
            let items = fields.get("prompt").and_then(prompt_items).ok_or_else(|| {
                RequestError::Invalid(
                    "prompt: Field required (a string, a list of strings or token ids)".into(),
                )
            })?;
            let tokens = items.iter().map(|item| item.tokens()).sum();
            (tokens, items.len() as u64, Vec::new())
        }
        Endpoint::Embeddings => {
            let items = fields.get("input").and_then(prompt_items).ok_or_else(|| {
                RequestError::Invalid(
                    "input: Field required (a string, a list of strings or token ids)".into(),
                )
            })?;
            let tokens = items.iter().map(|item| item.tokens()).sum();
            let fingerprints = items.iter().map(|item| item.fingerprint()).collect();
            (tokens, 0, fingerprints)
        }
        Endpoint::Messages | Endpoint::CountTokens => {
            let Some(tokens) = super::anthropic::prompt_tokens(fields) else {
                return invalid("messages: Field required (a list of messages)");
            };
            (tokens, 1, Vec::new())
        }
        Endpoint::Responses => {
            let Some(tokens) = super::responses_api::prompt_tokens(fields) else {
                return invalid("input: Field required (a string or a list of items)");
            };
            (tokens, 1, Vec::new())
        }
    };

    let n = optional_u64(fields, "n")?.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return invalid(format!("n must be between 1 and {MAX_CHOICES}, got {n}."));
    }
    let max_tokens = match optional_u64(fields, "max_completion_tokens")? {
        Some(limit) => Some(limit),
        None if endpoint == Endpoint::Responses => optional_u64(fields, "max_output_tokens")?,
        None => optional_u64(fields, "max_tokens")?,
    };
    if let Some(limit) = max_tokens {
        if limit == 0 {
            return invalid("max_tokens must be at least 1, got 0.");
        }
        if limit > MAX_MODEL_LEN {
            return invalid(format!(
                "This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested {limit} output tokens. Please reduce the length of the completion."
            ));
        }
    }
    if endpoint == Endpoint::Messages && max_tokens.is_none() {
        return invalid("max_tokens: Field required");
    }
    let (tokens_per_choice, finish_reason) = match endpoint {
        Endpoint::CountTokens => (0, "stop"),
        _ => completion_length(max_tokens, defaults),
    };

    Ok(InferenceRequest {
        endpoint,
        response_model,
        stream,
        usage: if stream {
            usage_switch(flavour, stream_options)
        } else {
            UsageSwitch::default()
        },
        choices: u32::try_from(prompts * n).unwrap_or(u32::MAX),
        tokens_per_choice,
        finish_reason,
        prompt_tokens,
        seed,
        embedding_inputs,
        tool_call: (endpoint == Endpoint::Messages)
            .then(|| super::anthropic::forced_tool(fields))
            .flatten(),
        responses: (endpoint == Endpoint::Responses)
            .then(|| super::responses_api::ResponsesFields::from_body(fields)),
    })
}

/// Tokens per choice and the finish reason.
///
/// Without `x-sim-tokens` the answer is exactly `max_tokens` long ("length"), or
/// `--tokens` long ("stop") when no limit is given. With `x-sim-tokens: N` the model
/// "wants" N tokens: a smaller `max_tokens` cuts it ("length"), otherwise "stop".
pub fn completion_length(
    max_tokens: Option<u64>,
    defaults: GenerationDefaults,
) -> (u64, &'static str) {
    match (defaults.tokens_override, max_tokens) {
        (Some(natural), Some(limit)) if limit < natural => (limit, "length"),
        (Some(natural), _) => (natural, "stop"),
        (None, Some(limit)) => (limit, "length"),
        (None, None) => (defaults.default_tokens, "stop"),
    }
}

fn optional_u64(fields: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match lax::int(value) {
            Some(number) => match u64::try_from(number) {
                Ok(number) => Ok(Some(number)),
                Err(_) => invalid(format!("{name} must be at least 1, got {value}.")),
            },
            None => invalid(format!("{name}: Input should be a valid integer")),
        },
    }
}

fn resolve_model(flavour: Flavour, requested: Option<&Value>, served: &[String]) -> Result<String> {
    let first_served = served.first().cloned().unwrap_or_default();
    let requested = match requested {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.as_str()),
        Some(_) => return invalid("model: Input should be a valid string"),
    };
    match flavour {
        // vLLM answers with its first served name, whatever alias was asked for.
        Flavour::Vllm => match requested {
            None | Some("") => Ok(first_served),
            Some(name) if served.iter().any(|s| s == name) => Ok(first_served),
            Some(name) => Err(RequestError::UnknownModel(name.to_owned())),
        },
        // trtllm-serve requires the field but never checks it, and echoes it back.
        Flavour::Trtllm => match requested {
            Some(name) => Ok(name.to_owned()),
            None => invalid("model: Field required"),
        },
        Flavour::TritonOpenai => match requested {
            Some(name) if served.iter().any(|s| s == name) => Ok(name.to_owned()),
            Some(name) => Err(RequestError::UnknownModel(name.to_owned())),
            None => invalid("model: Field required"),
        },
    }
}

/// Top-level fields trtllm-serve's request models accept (`extra="forbid"`).
const TRTLLM_COMMON_FIELDS: &[&str] = &[
    "model",
    "user",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "best_of",
    "use_beam_search",
    "top_k",
    "top_p_min",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "early_stopping",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "add_special_tokens",
    "lora_request",
    "disaggregated_params",
    "echo",
    "cache_salt",
];
const TRTLLM_CHAT_FIELDS: &[&str] = &[
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "add_generation_prompt",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "reasoning_effort",
];
const TRTLLM_COMPLETION_FIELDS: &[&str] =
    &["prompt", "suffix", "detokenize", "return_context_logits"];
const TRTLLM_EMBEDDING_FIELDS: &[&str] =
    &["model", "input", "encoding_format", "dimensions", "user"];

fn reject_unknown_fields(endpoint: Endpoint, fields: &Map<String, Value>) -> Result<()> {
    let allowed = |name: &str| match endpoint {
        Endpoint::Chat => {
            TRTLLM_COMMON_FIELDS.contains(&name) || TRTLLM_CHAT_FIELDS.contains(&name)
        }
        Endpoint::Completions => {
            TRTLLM_COMMON_FIELDS.contains(&name) || TRTLLM_COMPLETION_FIELDS.contains(&name)
        }
        Endpoint::Embeddings => TRTLLM_EMBEDDING_FIELDS.contains(&name),
        // trtllm-serve has no Anthropic routes (the server answers them 404 first).
        Endpoint::Messages | Endpoint::CountTokens | Endpoint::Responses => false,
    };
    let unknown: Vec<(&String, &Value)> =
        fields.iter().filter(|(name, _)| !allowed(name)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    invalid(pydantic_extra_forbidden(endpoint.schema_name(), &unknown))
}

/// Mimics pydantic v2's text for `extra="forbid"` violations.
fn pydantic_extra_forbidden(schema: &str, unknown: &[(&String, &Value)]) -> String {
    let count = unknown.len();
    let plural = if count == 1 { "error" } else { "errors" };
    let mut text = format!("{count} validation {plural} for {schema}");
    for (name, value) in unknown {
        let input_type = match value {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "int",
            Value::String(_) => "str",
            Value::Array(_) => "list",
            Value::Object(_) => "dict",
        };
        let mut shown = value.to_string();
        if shown.len() > 40 {
            let cut = (0..=40)
                .rev()
                .find(|i| shown.is_char_boundary(*i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        text.push_str(&format!(
            "\n{name}\n  Extra inputs are not permitted [type=extra_forbidden, input_value={shown}, input_type={input_type}]"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULTS: GenerationDefaults = GenerationDefaults {
        default_tokens: 16,
        tokens_override: None,
        seed: 0,
    };

    fn served() -> Vec<String> {
        vec!["sim-model".into(), "alias".into()]
    }

    fn parse(flavour: Flavour, endpoint: Endpoint, body: Value) -> Result<InferenceRequest> {
        parse_request(flavour, endpoint, &body, &served(), DEFAULTS)
    }

    #[test]
    fn usage_switch_table() {
        let table = [
            (None, [(false, false), (false, false), (false, false)]),
            (
                Some(json!({})),
                [(true, false), (true, false), (false, false)],
            ),
            (
                Some(json!({"include_usage": true})),
                [(true, false), (true, false), (true, false)],
            ),
            (
                Some(json!({"include_usage": false})),
                [(false, false), (false, false), (false, false)],
            ),
            (
                Some(json!({"include_usage": true, "continuous_usage_stats": true})),
                [(true, true), (true, true), (true, false)],
            ),
            (
                Some(json!({"continuous_usage_stats": true})),
                [(true, true), (true, true), (false, false)],
            ),
        ];
        let flavours = [Flavour::Vllm, Flavour::Trtllm, Flavour::TritonOpenai];
        for (options, expected) in table {
            for (flavour, (final_chunk, every_chunk)) in flavours.iter().zip(expected) {
                assert_eq!(
                    usage_switch(*flavour, options.as_ref()),
                    UsageSwitch {
                        final_chunk,
                        every_chunk
                    },
                    "{flavour:?} {options:?}"
                );
            }
        }
    }

    #[test]
    fn vllm_model_resolution() {
        let chat = |model: Value| {
            parse(
                Flavour::Vllm,
                Endpoint::Chat,
                json!({"model": model, "messages": []}),
            )
        };
        assert_eq!(
            chat(json!("alias")).map(|r| r.response_model),
            Ok("sim-model".into())
        );
        assert_eq!(
            chat(json!(null)).map(|r| r.response_model),
            Ok("sim-model".into())
        );
        assert_eq!(
            chat(json!("")).map(|r| r.response_model),
            Ok("sim-model".into())
        );
        assert_eq!(
            chat(json!("nope")),
            Err(RequestError::UnknownModel("nope".into()))
        );
    }

    #[test]
    fn trtllm_echoes_model_and_rejects_unknown_fields() {
        let ok = parse(
            Flavour::Trtllm,
            Endpoint::Chat,
            json!({"model": "anything", "messages": [], "top_k": 3}),
        );
        assert_eq!(ok.map(|r| r.response_model), Ok("anything".into()));
        let bad = parse(
            Flavour::Trtllm,
            Endpoint::Chat,
            json!({"model": "m", "messages": [], "tokengate_tag": 1}),
        );
        match bad {
            Err(RequestError::Invalid(text)) => {
                assert!(text.contains("tokengate_tag"), "{text}");
                assert!(text.contains("extra_forbidden"), "{text}");
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        // vLLM ignores unknown fields.
        let vllm = parse(
            Flavour::Vllm,
            Endpoint::Chat,
            json!({"messages": [], "tokengate_tag": 1}),
        );
        assert!(vllm.is_ok());
    }

    #[test]
    fn triton_unknown_model_is_refused() {
        let r = parse(
            Flavour::TritonOpenai,
            Endpoint::Completions,
            json!({"model": "x", "prompt": "hi"}),
        );
        assert_eq!(r, Err(RequestError::UnknownModel("x".into())));
    }

    #[test]
    fn stream_options_require_stream() {
        for flavour in [Flavour::Vllm, Flavour::Trtllm, Flavour::TritonOpenai] {
            let body = json!({"model": "sim-model", "prompt": "a",
                              "stream_options": {"include_usage": true}});
            assert!(matches!(
                parse(flavour, Endpoint::Completions, body),
                Err(RequestError::Invalid(_))
            ));
            let streaming = json!({"model": "sim-model", "prompt": "a", "stream": true,
                                   "stream_options": {"include_usage": true}});
            let parsed = parse(flavour, Endpoint::Completions, streaming);
            assert_eq!(parsed.map(|r| r.usage.final_chunk), Ok(true));
        }
    }

    #[test]
    fn lengths_and_finish_reasons() {
        let with = |tokens_override, max| {
            completion_length(
                max,
                GenerationDefaults {
                    tokens_override,
                    ..DEFAULTS
                },
            )
        };
        assert_eq!(with(None, None), (16, "stop"));
        assert_eq!(with(None, Some(5)), (5, "length"));
        assert_eq!(with(Some(200), None), (200, "stop"));
        assert_eq!(with(Some(200), Some(50)), (50, "length"));
        assert_eq!(with(Some(20), Some(50)), (20, "stop"));
    }

    #[test]
    fn choices_prompt_tokens_and_limits() {
        let r = parse(
            Flavour::Vllm,
            Endpoint::Completions,
            json!({"prompt": ["a b", "c"], "n": 2, "max_completion_tokens": 4, "max_tokens": 9}),
        );
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((r.choices, r.prompt_tokens, r.tokens_per_choice), (4, 3, 4));
        assert_eq!(r.finish_reason, "length");
        let zero = parse(
            Flavour::Vllm,
            Endpoint::Chat,
            json!({"messages": [], "max_tokens": 0}),
        );
        assert!(zero.is_err());
        assert!(matches!(decode_body(b"{"), Err(RequestError::Invalid(_))));
        let not_object = parse(Flavour::Vllm, Endpoint::Chat, json!([1]));
        assert!(matches!(not_object, Err(RequestError::Invalid(_))));
        let no_messages = parse(Flavour::Vllm, Endpoint::Chat, json!({"model": "sim-model"}));
        assert!(no_messages.is_err());
    }

    #[test]
    fn embeddings_one_fingerprint_per_input() {
        let r = parse(
            Flavour::Vllm,
            Endpoint::Embeddings,
            json!({"input": ["one two", "three"]}),
        );
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.embedding_inputs.len(), 2);
        assert_eq!(r.prompt_tokens, 3);
    }

    #[test]
    fn summary_is_lenient() {
        let body = json!({"model": "m", "stream": true, "max_tokens": 7,
                          "stream_options": {"include_usage": false}});
        let summary = RequestSummary::from_body(&body);
        assert_eq!(summary.model.as_deref(), Some("m"));
        assert!(summary.stream);
        assert_eq!(summary.include_usage, Some(json!(false)));
        assert_eq!(summary.max_tokens, Some(7));
        assert_eq!(
            RequestSummary::from_body(&json!(3)),
            RequestSummary::default()
        );
    }

    #[test]
    fn coerces_like_pydantic_lax_mode() {
        let r = parse(
            Flavour::Vllm,
            Endpoint::Completions,
            json!({"prompt": "a", "n": "3", "max_tokens": 4e0, "stream": "true", "seed": "9"}),
        );
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(r.stream);
        assert_eq!((r.choices, r.tokens_per_choice, r.seed), (3, 4, 9));
        let r = parse(
            Flavour::Trtllm,
            Endpoint::Chat,
            json!({"model": "sim-model", "messages": [], "stream": 1, "max_completion_tokens": "2.0"}),
        );
        let r = r.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(r.stream && r.usage == UsageSwitch::default());
        assert_eq!(r.tokens_per_choice, 2);
        for bad in [
            json!({"n": "2.5"}),
            json!({"stream": "maybe"}),
            json!({"max_tokens": 1.5}),
        ] {
            let mut body = json!({"messages": []});
            for (k, v) in bad.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            assert!(parse(Flavour::Vllm, Endpoint::Chat, body).is_err());
        }
        let summary = RequestSummary::from_body(&json!({"stream": "yes", "max_tokens": "7"}));
        assert!(summary.stream);
        assert_eq!(summary.max_tokens, Some(7));
    }
}
