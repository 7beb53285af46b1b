//! An Ollama request body → the OpenAI body the replica gets. Every field is either mapped,
//! knowingly ignored (runtime knobs with no meaning on a shared replica), or refused with a
//! 400 that names it: nothing is silently dropped that would change the answer.

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Why an Ollama request cannot be translated (always a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request body: {0}")]
    InvalidJson(String),
    #[error("model is required")]
    MissingModel,
    #[error("{field} is not supported by this gateway: {reason}")]
    Unsupported { field: String, reason: &'static str },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: &'static str },
}

impl RequestError {
    /// Stable code for the access log and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::InvalidJson(_) => "invalid_json",
            RequestError::MissingModel => "missing_model",
            RequestError::Unsupported { .. } => "unsupported_parameter",
            RequestError::Invalid { .. } => "invalid_parameter",
        }
    }
}

/// The OpenAI body to send upstream, and what the reply needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub body: Vec<u8>,
    /// The model as the client named it (echoed in every reply line).
    pub model: String,
    pub stream: bool,
    /// The replica route the body is for.
    pub upstream: super::Upstream,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    prompt: Option<String>,
    suffix: Option<String>,
    system: Option<String>,
    template: Option<String>,
    context: Option<Vec<Value>>,
    images: Option<Vec<Value>>,
    raw: Option<bool>,
    #[serde(flatten)]
    common: Common,
}

/// Top-level fields each call accepts. `keep_alive` (how long Ollama keeps a model loaded),
/// `truncate` and `shift` (its runner's context-window handling) are accepted and ignored:
/// replicas keep their models loaded and manage their own context.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "format",
    "options",
    "stream",
    "keep_alive",
    "think",
    "truncate",
    "shift",
    "logprobs",
    "top_logprobs",
];
const CHAT_FIELDS: &[&str] = &["messages", "tools"];
const GENERATE_FIELDS: &[&str] = &[
    "prompt", "suffix", "system", "template", "context", "raw", "images",
];

/// Fields `/api/chat` and `/api/generate` share.
#[derive(Deserialize)]
struct Common {
    format: Option<Value>,
    options: Option<Map<String, Value>>,
    stream: Option<bool>,
    think: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    images: Option<Vec<Value>>,
    tool_calls: Option<Vec<ToolCall>>,
    /// The model's earlier reasoning: not sent back (chat templates drop it too).
    #[allow(dead_code)]
    thinking: Option<String>,
    tool_name: Option<String>,
}

#[derive(Deserialize)]
struct ToolCall {
    function: ToolFunction,
}

#[derive(Deserialize)]
struct ToolFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// `POST /api/chat` → `/v1/chat/completions`.
pub fn translate_chat(body: &[u8]) -> Result<Translated, RequestError> {
    let request: ChatRequest = parse(body, CHAT_FIELDS)?;
    let model = model_of(request.model)?;
    if request.messages.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    let messages = chat_messages(request.messages)?;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.clone()));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = request.tools.filter(|t| !t.is_empty()) {
        out.insert("tools".into(), Value::Array(tools));
    }
    let stream = common_fields(&request.common, &mut out)?;
    finish(out, model, stream, super::Upstream::ChatCompletions)
}

/// `POST /api/generate` → `/v1/chat/completions`: `system` and `prompt` as a system and a
/// user message, so the replica applies the model's chat template as Ollama applies the
/// model's prompt template. With `raw: true` → `/v1/completions`, the prompt as is.
pub fn translate_generate(body: &[u8]) -> Result<Translated, RequestError> {
    let request: GenerateRequest = parse(body, GENERATE_FIELDS)?;
    let model = model_of(request.model)?;
    let raw = request.raw == Some(true);
    refuse_set(
        "suffix",
        request.suffix.as_deref().is_some_and(|s| !s.is_empty()),
    )?;
    refuse_set(
        "template",
        request.template.as_deref().is_some_and(|s| !s.is_empty()),
    )?;
    refuse_set(
        "context",
        request.context.as_ref().is_some_and(|c| !c.is_empty()),
    )?;
    refuse_set(
        "images",
        request.images.as_ref().is_some_and(|i| !i.is_empty()),
    )?;
    let system = request.system.filter(|s| !s.is_empty());
    if raw && system.is_some() {
        return Err(invalid("system", "a raw prompt takes no system prompt"));
    }
    let prompt = request.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return Err(invalid("prompt", "a non-empty prompt is required"));
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.clone()));
    let upstream = if raw {
        out.insert("prompt".into(), Value::String(prompt));
        super::Upstream::Completions
    } else {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        out.insert("messages".into(), Value::Array(messages));
        super::Upstream::ChatCompletions
    };
    let stream = common_fields(&request.common, &mut out)?;
    finish(out, model, stream, upstream)
}

/// The body as `T`, after checking it is an object of known fields only.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], own: &[&str]) -> Result<T, RequestError> {
    let bad = |e: serde_json::Error| RequestError::InvalidJson(e.to_string());
    let value: Value = serde_json::from_slice(body).map_err(bad)?;
    let Value::Object(fields) = &value else {
        return Err(RequestError::InvalidJson(
            "the body must be a JSON object".into(),
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !COMMON_FIELDS.contains(&k.as_str()))
    {
        return Err(RequestError::Unsupported {
            field: unknown.clone(),
            reason: "not a field of this Ollama API call",
        });
    }
    serde_json::from_value(value).map_err(bad)
}

fn model_of(model: Option<String>) -> Result<String, RequestError> {
    model
        .filter(|m| !m.is_empty())
        .ok_or(RequestError::MissingModel)
}

fn invalid(field: &str, reason: &'static str) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        reason,
    }
}

fn refuse_set(field: &str, set: bool) -> Result<(), RequestError> {
    if set {
        return Err(RequestError::Unsupported {
            field: field.into(),
            reason: match field {
                "images" => "images are not passed to the replicas",
                "context" => {
                    "the replicas keep no Ollama context; send the conversation to /api/chat"
                }
                _ => "the prompt goes to /v1/completions as is; use /api/chat",
            },
        });
    }
    Ok(())
}

fn finish(
    out: Map<String, Value>,
    model: String,
    stream: bool,
    upstream: super::Upstream,
) -> Result<Translated, RequestError> {
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    Ok(Translated {
        body,
        model,
        stream,
        upstream,
    })
}

/// Ollama messages → OpenAI messages. Tool calls get ids (`call_<message>_<n>`) and each
/// following `tool` message answers the next one, in order.
fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<Value>, RequestError> {
    let mut out = Vec::with_capacity(messages.len());
    let mut pending: std::collections::VecDeque<String> = Default::default();
    for (i, m) in messages.into_iter().enumerate() {
        if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(RequestError::Unsupported {
                field: format!("messages[{i}].images"),
                reason: "images are not passed to the replicas",
            });
        }
        let content = m.content.unwrap_or_default();
        let mut msg = Map::new();
        match m.role.as_str() {
            "system" | "user" => {}
            "assistant" => {
                let calls = m.tool_calls.unwrap_or_default();
                if !calls.is_empty() {
                    pending.clear();
                    let calls: Vec<Value> = calls
                        .into_iter()
                        .enumerate()
                        .map(|(n, c)| {
                            let id = format!("call_{i}_{n}");
                            pending.push_back(id.clone());
                            let arguments = match c.function.arguments {
                                Value::String(s) => s,
                                Value::Null => "{}".to_string(),
                                other => other.to_string(),
                            };
                            json!({"id": id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": arguments}})
                        })
                        .collect();
                    msg.insert("tool_calls".into(), Value::Array(calls));
                }
            }
            "tool" => {
                let id = pending.pop_front().unwrap_or_else(|| format!("call_{i}"));
                msg.insert("tool_call_id".into(), Value::String(id));
                if let Some(name) = m.tool_name {
                    msg.insert("name".into(), Value::String(name));
                }
            }
            _ => {
                return Err(RequestError::Invalid {
                    field: format!("messages[{i}].role"),
                    reason: "must be system, user, assistant or tool",
                })
            }
        }
        msg.insert("role".into(), Value::String(m.role));
        msg.insert("content".into(), Value::String(content));
        out.push(Value::Object(msg));
    }
    Ok(out)
}

/// `format`, `options`, `stream`, `think`, `logprobs` → the OpenAI body; returns `stream`
/// (Ollama's default is `true`).
fn common_fields(common: &Common, out: &mut Map<String, Value>) -> Result<bool, RequestError> {
    if common
        .think
        .as_ref()
        .is_some_and(|t| !matches!(t, Value::Bool(false) | Value::Null))
    {
        return Err(RequestError::Unsupported {
            field: "think".into(),
            reason:
                "reasoning is decided by the replica's model; send think: false or leave it out",
        });
    }
    if common.logprobs == Some(true) || common.top_logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(RequestError::Unsupported {
            field: "logprobs".into(),
            reason: "log probabilities are not translated",
        });
    }
    if let Some(format) = response_format(common.format.as_ref())? {
        out.insert("response_format".into(), format);
    }
    if let Some(options) = common.options.as_ref() {
        map_options(options, out)?;
    }
    let stream = common.stream.unwrap_or(true);
    out.insert("stream".into(), Value::Bool(stream));
    if stream {
        // Tokens are metered from the replica's own usage chunk, and give `eval_count`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(stream)
}

/// `format: "json"` → `json_object`; a JSON schema → `json_schema`.
fn response_format(format: Option<&Value>) -> Result<Option<Value>, RequestError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(json!({"type": "json_object"}))),
        Some(schema @ Value::Object(_)) => Ok(Some(json!({
            "type": "json_schema",
            "json_schema": {"name": "ollama_format", "schema": schema},
        }))),
        Some(_) => Err(invalid(
            "format",
            "must be \"json\" or a JSON schema object",
        )),
    }
}

/// Runtime knobs of Ollama's own runner: they change where and how fast a model runs, not
/// what it answers, and a shared replica has its own. Accepted and ignored.
const IGNORED_OPTIONS: &[&str] = &[
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_keep",
    "use_mmap",
    "use_mlock",
    "numa",
    "low_vram",
    "f16_kv",
    "vocab_only",
    "logits_all",
];

/// Sampling options → the OpenAI fields of the same meaning; any other option is refused.
fn map_options(
    options: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), RequestError> {
    for (name, value) in options {
        let field = || format!("options.{name}");
        let number = || {
            value
                .is_number()
                .then(|| value.clone())
                .ok_or_else(|| invalid(&field(), "must be a number"))
        };
        let integer = || {
            value
                .as_i64()
                .ok_or_else(|| invalid(&field(), "must be an integer"))
        };
        match name.as_str() {
            "temperature" | "top_p" | "min_p" | "presence_penalty" | "frequency_penalty" => {
                out.insert(name.clone(), number()?);
            }
            "top_k" | "seed" => {
                out.insert(name.clone(), Value::from(integer()?));
            }
            // Ollama: -1 generates until the model stops, -2 fills the context.
            "num_predict" => {
                let n = integer()?;
                if n > 0 {
                    out.insert("max_tokens".into(), Value::from(n));
                }
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
                    _ => return Err(invalid(&field(), "must be a string or a list of strings")),
                };
                if !stops.is_empty() {
                    out.insert("stop".into(), Value::Array(stops));
                }
            }
            n if IGNORED_OPTIONS.contains(&n) => {}
            _ => {
                return Err(RequestError::Unsupported {
                    field: field(),
                    reason: "only temperature, top_p, top_k, min_p, seed, num_predict, stop, presence_penalty and frequency_penalty are translated",
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(t: &Translated) -> Value {
        serde_json::from_slice(&t.body).unwrap()
    }

    #[test]
    fn chat_maps_messages_options_and_streams_by_default() {
        let t = translate_chat(
            br#"{"model":"m:latest","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}],
                "options":{"temperature":0.5,"top_k":4,"seed":7,"num_predict":12,"stop":"x","num_ctx":4096},
                "format":"json","keep_alive":"5m"}"#,
        )
        .unwrap();
        assert!(t.stream);
        assert_eq!(t.model, "m:latest");
        let b = body(&t);
        assert_eq!(b["messages"][1], json!({"role":"user","content":"hi"}));
        assert_eq!(b["temperature"], 0.5);
        assert_eq!(b["top_k"], 4);
        assert_eq!(b["seed"], 7);
        assert_eq!(b["max_tokens"], 12);
        assert_eq!(b["stop"], json!(["x"]));
        assert_eq!(b["response_format"], json!({"type":"json_object"}));
        assert_eq!(b["stream_options"], json!({"include_usage": true}));
        assert!(b.get("num_ctx").is_none() && b.get("keep_alive").is_none());
    }

    #[test]
    fn tool_calls_get_ids_and_tool_results_answer_them() {
        let t = translate_chat(
            br#"{"model":"m","stream":false,"tools":[{"type":"function","function":{"name":"f"}}],"messages":[
                {"role":"user","content":"q"},
                {"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},
                {"role":"tool","content":"42","tool_name":"f"}]}"#,
        )
        .unwrap();
        assert!(!t.stream);
        let b = body(&t);
        assert!(b.get("stream_options").is_none());
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        let call = &b["messages"][1]["tool_calls"][0];
        assert_eq!(call["id"], "call_1_0");
        assert_eq!(call["function"]["arguments"], r#"{"a":1}"#);
        assert_eq!(b["messages"][2]["tool_call_id"], "call_1_0");
        assert_eq!(b["messages"][2]["name"], "f");
    }

    #[test]
    fn json_schema_format() {
        let t = translate_generate(br#"{"model":"m","prompt":"p","format":{"type":"object"}}"#)
            .unwrap();
        let b = body(&t);
        assert_eq!(b["messages"], json!([{"role":"user","content":"p"}]));
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"],
            json!({"type":"object"})
        );
    }

    #[test]
    fn refuses_what_it_cannot_translate() {
        let chat = |s: &str| translate_chat(s.as_bytes()).unwrap_err();
        let generate = |s: &str| translate_generate(s.as_bytes()).unwrap_err();
        assert_eq!(
            chat("{nope"),
            RequestError::InvalidJson("key must be a string at line 1 column 2".into())
        );
        assert_eq!(
            chat(r#"{"messages":[{"role":"user","content":"x"}]}"#),
            RequestError::MissingModel
        );
        let e =
            chat(r#"{"model":"m","messages":[{"role":"user","content":"x","images":["aGk="]}]}"#);
        assert!(e.to_string().contains("messages[0].images"), "{e}");
        let e = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"mirostat":1}}"#,
        );
        assert!(e.to_string().contains("options.mirostat"), "{e}");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"bogus":1}"#);
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"temperature":"hot"}}"#,
        );
        assert!(e.to_string().contains("options.temperature"), "{e}");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"think":true}"#);
        assert!(e.to_string().contains("think"), "{e}");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"format":"yaml"}"#);
        assert!(e.to_string().contains("format"), "{e}");
        for field in ["suffix", "template"] {
            let e = generate(&format!(r#"{{"model":"m","prompt":"p","{field}":"x"}}"#));
            assert!(e.to_string().starts_with(field), "{e}");
        }
        let e = generate(r#"{"model":"m","prompt":"p","context":[1,2]}"#);
        assert!(e.to_string().starts_with("context"), "{e}");
        // What the official Python client sends for `generate(model, prompt)`.
        let sdk = br#"{"model":"m","prompt":"p","suffix":"","system":"","template":"","raw":false,"stream":false}"#;
        assert!(!translate_generate(sdk).unwrap().stream);
        let e = generate(r#"{"model":"m"}"#);
        assert!(e.to_string().contains("prompt"), "{e}");
        assert!(
            translate_generate(br#"{"model":"m","prompt":"p","raw":true,"suffix":""}"#).is_ok()
        );
        let e = generate(r#"{"model":"m","prompt":"p","raw":true,"system":"s"}"#);
        assert!(e.to_string().contains("system"), "{e}");
    }

    #[test]
    fn generate_is_a_templated_chat_turn_unless_raw() {
        use super::super::Upstream;
        let t = translate_generate(br#"{"model":"m","prompt":"p","system":"be brief"}"#).unwrap();
        assert_eq!(t.upstream, Upstream::ChatCompletions);
        let b = body(&t);
        assert_eq!(
            b["messages"],
            json!([{"role":"system","content":"be brief"},{"role":"user","content":"p"}])
        );
        assert!(b.get("prompt").is_none());
        let t = translate_generate(br#"{"model":"m","prompt":"p","raw":true}"#).unwrap();
        assert_eq!(t.upstream, Upstream::Completions);
        let b = body(&t);
        assert_eq!(b["prompt"], "p");
        assert!(b.get("messages").is_none());
        let chat = translate_chat(br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(chat.unwrap().upstream, Upstream::ChatCompletions);
    }
}
