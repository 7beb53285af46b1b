//! Ollama's reply lines, and the non-streaming translation: the replica's OpenAI body →
//! one Ollama JSON object.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{done_reason, error_body, Api};

/// The time a reply line is written at (passed in: this module reads no clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub wall: SystemTime,
}

/// When the request started (`total_duration`) and went upstream (`prompt_eval_duration`).
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub request: Instant,
    pub upstream: Instant,
}

/// One line (or the one object) Ollama sends.
#[derive(Serialize)]
pub struct Line<'a> {
    pub model: &'a str,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    pub done: bool,
    #[serde(flatten)]
    pub end: Option<Final<'a>>,
}

#[derive(Serialize)]
pub struct OutMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall<'a>>,
}

#[derive(Serialize)]
pub struct OutToolCall<'a> {
    pub function: OutFunction<'a>,
}

#[derive(Serialize)]
pub struct OutFunction<'a> {
    pub name: &'a str,
    pub arguments: Value,
}

/// The fields of the `done: true` line. Durations in nanoseconds, from the gateway's timing.
#[derive(Serialize)]
pub struct Final<'a> {
    pub done_reason: &'a str,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u64,
    pub prompt_eval_duration: u64,
    pub eval_count: u64,
    pub eval_duration: u64,
}

impl<'a> Final<'a> {
    /// `first_token`: when generation was first seen (the end of prompt evaluation).
    pub fn new(
        done_reason: &'a str,
        usage: TokenCounts,
        started: Started,
        first_token: Option<Instant>,
        now: Instant,
    ) -> Final<'a> {
        let first = first_token.unwrap_or(now);
        Final {
            done_reason,
            total_duration: nanos(now.saturating_duration_since(started.request)),
            load_duration: 0,
            prompt_eval_count: usage.prompt,
            prompt_eval_duration: nanos(first.saturating_duration_since(started.upstream)),
            eval_count: usage.completion,
            eval_duration: nanos(now.saturating_duration_since(first)),
        }
    }
}

/// Tokens from the replica's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub prompt: u64,
    pub completion: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub fn created_at(wall: SystemTime) -> String {
    humantime::format_rfc3339_nanos(wall).to_string()
}

/// A serialised line with its `\n`.
pub fn to_line(line: &Line<'_>) -> Vec<u8> {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `arguments` as Ollama sends them: an object (a replica's string that is not JSON stays a
/// string).
pub fn arguments_value(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

/// Bound on a non-streaming reply held for translation.
pub const MAX_JSON_REPLY_BYTES: usize = 16 << 20;

/// A non-streaming reply: held (bounded), translated once complete.
#[derive(Debug)]
pub struct JsonReply {
    api: Api,
    model: String,
    started: Started,
    /// When the replica's answer began (its header): the end of prompt evaluation, as far
    /// as the gateway can tell.
    first_byte: Instant,
    buf: Vec<u8>,
    overflowed: bool,
}

#[derive(Deserialize)]
struct OpenAiReply {
    #[serde(default)]
    choices: Vec<ReplyChoice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
struct ReplyChoice {
    #[serde(default)]
    message: Option<ReplyMessage>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ReplyToolCall>,
}

#[derive(Deserialize)]
struct ReplyToolCall {
    function: ReplyFunction,
}

#[derive(Deserialize)]
struct ReplyFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default, Clone, Copy)]
pub struct ReplyUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl From<ReplyUsage> for TokenCounts {
    fn from(u: ReplyUsage) -> TokenCounts {
        TokenCounts {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
        }
    }
}

impl JsonReply {
    pub fn new(api: Api, model: &str, started: Started, first_byte: Instant) -> JsonReply {
        JsonReply {
            api,
            model: model.to_string(),
            started,
            first_byte,
            buf: Vec::new(),
            overflowed: false,
        }
    }

    /// Hold a piece; nothing is sent before the body is complete.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.buf.len() + piece.len() > MAX_JSON_REPLY_BYTES {
            self.overflowed = true;
            self.buf = Vec::new();
        }
        if !self.overflowed {
            self.buf.extend_from_slice(piece);
        }
    }

    /// The Ollama object for the whole reply (an `{"error":…}` if it cannot be read).
    pub fn finish(&mut self, clock: Clock) -> Bytes {
        if self.overflowed {
            return error_body("the replica's reply is too large to translate");
        }
        let Ok(reply) = serde_json::from_slice::<OpenAiReply>(&self.buf) else {
            return error_body("the replica's reply could not be read (cut or not JSON)");
        };
        let Some(choice) = reply.choices.into_iter().next() else {
            return error_body("the replica's reply has no choices");
        };
        let usage = reply.usage.unwrap_or_default().into();
        let reason = done_reason(choice.finish_reason.as_deref());
        let end = Final::new(
            reason,
            usage,
            self.started,
            Some(self.first_byte),
            clock.now,
        );
        let message = choice.message.unwrap_or(ReplyMessage {
            content: None,
            reasoning_content: None,
            reasoning: None,
            tool_calls: Vec::new(),
        });
        // `/api/generate` over chat/completions: the answer is the message's content.
        let text = choice
            .text
            .or_else(|| message.content.clone())
            .unwrap_or_default();
        let thinking = message
            .reasoning_content
            .as_deref()
            .or(message.reasoning.as_deref())
            .filter(|t| !t.is_empty());
        let line = Line {
            model: &self.model,
            created_at: created_at(clock.wall),
            message: (self.api == Api::Chat).then(|| OutMessage {
                role: "assistant",
                content: message.content.as_deref().unwrap_or(""),
                thinking,
                tool_calls: message
                    .tool_calls
                    .iter()
                    .map(|c| OutToolCall {
                        function: OutFunction {
                            name: &c.function.name,
                            arguments: arguments_value(&c.function.arguments),
                        },
                    })
                    .collect(),
            }),
            response: (self.api == Api::Generate).then_some(text.as_str()),
            done: true,
            end: Some(end),
        };
        let mut out = to_line(&line);
        out.pop();
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(start: Instant) -> (Started, Clock) {
        let started = Started {
            request: start,
            upstream: start + Duration::from_millis(1),
        };
        let clock = Clock {
            now: start + Duration::from_millis(10),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        };
        (started, clock)
    }

    #[test]
    fn chat_reply_becomes_one_ollama_object() {
        let start = Instant::now();
        let (started, clock) = clock(start);
        let mut reply = JsonReply::new(
            Api::Chat,
            "llama",
            started,
            start + Duration::from_millis(2),
        );
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi",
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        let (a, b) = body.split_at(30);
        reply.feed(a);
        reply.feed(b);
        let v: Value = serde_json::from_slice(&reply.finish(clock)).unwrap();
        assert_eq!(v["model"], "llama");
        assert_eq!(v["created_at"], "2026-01-01T00:00:00.000000000Z");
        assert_eq!(v["message"]["content"], "hi");
        assert_eq!(
            v["message"]["tool_calls"][0]["function"]["arguments"]["a"],
            1
        );
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "stop");
        assert_eq!(v["prompt_eval_count"], 5);
        assert_eq!(v["eval_count"], 3);
        assert_eq!(v["total_duration"], 10_000_000);
        assert_eq!(v["prompt_eval_duration"], 1_000_000);
        assert_eq!(v["eval_duration"], 8_000_000);
        assert!(v.get("response").is_none());
    }

    #[test]
    fn generate_reply_and_unreadable_ones() {
        let start = Instant::now();
        let (started, clock) = clock(start);
        let mut reply = JsonReply::new(Api::Generate, "m", started, start);
        reply.feed(br#"{"choices":[{"text":"abc","finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":4}}"#);
        let v: Value = serde_json::from_slice(&reply.finish(clock)).unwrap();
        assert_eq!(v["response"], "abc");
        assert_eq!(v["done_reason"], "length");
        assert!(v.get("message").is_none());
        let mut cut = JsonReply::new(Api::Generate, "m", started, start);
        cut.feed(br#"{"choices":[{"te"#);
        let v: Value = serde_json::from_slice(&cut.finish(clock)).unwrap();
        assert!(v["error"].as_str().unwrap().contains("could not be read"));
    }
}
