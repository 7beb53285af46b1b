//! The replica's OpenAI SSE stream → Ollama's NDJSON, event by event. State is bounded: the
//! SSE parser's partial event, the finish reason and usage, and the tool calls being
//! assembled (their arguments arrive in pieces; Ollama sends them whole), capped.

use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;

use super::response::{
    arguments_value, created_at, to_line, Clock, Final, Line, OutFunction, OutMessage, OutToolCall,
    ReplyUsage, Started, TokenCounts,
};
use super::{done_reason, Api};
use crate::metering::{SseParser, DEFAULT_MAX_EVENT_BYTES};

/// Bound on the tool-call names and arguments held until the turn ends.
pub const MAX_TOOL_CALL_BYTES: usize = 1 << 20;

/// Said on the error line of a stream that ended without the replica's `[DONE]`.
pub const CUT_MESSAGE: &str = "upstream stream ended before completion (truncated)";

#[derive(Debug)]
pub struct NdjsonStream {
    parser: SseParser,
    state: State,
}

/// Everything but the parser (so events are handled as the parser hands them out).
#[derive(Debug)]
struct State {
    api: Api,
    model: String,
    started: Started,
    first_token: Option<Instant>,
    finish_reason: Option<String>,
    usage: TokenCounts,
    tools: Vec<(String, String)>,
    tool_bytes: usize,
    /// The stream's last line (done or error) was written: nothing follows it.
    ended: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolDelta>,
}

#[derive(Deserialize)]
struct ToolDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl NdjsonStream {
    pub fn new(api: Api, model: &str, started: Started) -> NdjsonStream {
        NdjsonStream {
            parser: SseParser::new(DEFAULT_MAX_EVENT_BYTES),
            state: State {
                api,
                model: model.to_string(),
                started,
                first_token: None,
                finish_reason: None,
                usage: TokenCounts::default(),
                tools: Vec::new(),
                tool_bytes: 0,
                ended: false,
            },
        }
    }

    /// One piece of the (metered) upstream stream → the NDJSON lines it completes.
    pub fn feed(&mut self, piece: &[u8], clock: Clock) -> Bytes {
        let mut out = Vec::new();
        let state = &mut self.state;
        self.parser
            .feed(piece, |event| state.on_event(event.data, clock, &mut out));
        Bytes::from(out)
    }

    /// End of the upstream stream: a stream that never completed ends with an error line.
    pub fn finish(&mut self, clock: Clock) -> Bytes {
        let mut out = Vec::new();
        let state = &mut self.state;
        let _ = self
            .parser
            .finish(|event| state.on_event(event.data, clock, &mut out));
        if !self.state.ended {
            self.state.error_line(CUT_MESSAGE, &mut out);
        }
        Bytes::from(out)
    }

    /// Bytes held for an incomplete event and the tool calls being assembled.
    pub fn carried_bytes(&self) -> usize {
        self.parser.carried_bytes() + self.state.tool_bytes
    }
}

impl State {
    fn on_event(&mut self, data: &[u8], clock: Clock, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if data.trim_ascii() == b"[DONE]" {
            self.done_line(clock, out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let message = error["message"]
                .as_str()
                .or(error.as_str())
                .unwrap_or("the replica reported an error mid-stream")
                .to_string();
            self.error_line(&message, out);
            return;
        }
        if let Some(usage) = chunk.usage {
            self.usage = usage.into();
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.on_choice(choice, clock, out);
        }
    }

    fn on_choice(&mut self, choice: Choice, clock: Clock, out: &mut Vec<u8>) {
        let (content, thinking) = match choice.delta {
            Some(delta) => {
                self.add_tool_deltas(delta.tool_calls, out);
                let thinking = delta.reasoning_content.or(delta.reasoning);
                (
                    delta.content.unwrap_or_default(),
                    thinking.unwrap_or_default(),
                )
            }
            None => (choice.text.unwrap_or_default(), String::new()),
        };
        if !content.is_empty() || !thinking.is_empty() {
            self.first_token.get_or_insert(clock.now);
            let line = Line {
                model: &self.model,
                created_at: created_at(clock.wall),
                message: (self.api == Api::Chat).then_some(OutMessage {
                    role: "assistant",
                    content: &content,
                    thinking: (!thinking.is_empty()).then_some(thinking.as_str()),
                    tool_calls: Vec::new(),
                }),
                response: (self.api == Api::Generate).then_some(content.as_str()),
                done: false,
                end: None,
            };
            if !self.ended {
                out.extend_from_slice(&to_line(&line));
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish_reason = Some(reason);
            self.tool_calls_line(clock, out);
        }
    }

    fn add_tool_deltas(&mut self, deltas: Vec<ToolDelta>, out: &mut Vec<u8>) {
        for delta in deltas {
            let Some(function) = delta.function else {
                continue;
            };
            let added = function.name.as_ref().map_or(0, String::len)
                + function.arguments.as_ref().map_or(0, String::len);
            self.tool_bytes += added;
            if self.tool_bytes > MAX_TOOL_CALL_BYTES || delta.index > self.tools.len() {
                self.error_line("the replica's tool calls are too large to translate", out);
                return;
            }
            if delta.index == self.tools.len() {
                self.tools.push((String::new(), String::new()));
            }
            if let Some((name, arguments)) = self.tools.get_mut(delta.index) {
                name.push_str(function.name.as_deref().unwrap_or(""));
                arguments.push_str(function.arguments.as_deref().unwrap_or(""));
            }
        }
    }

    /// The assembled tool calls, in one message (as Ollama sends them), once the turn ends.
    fn tool_calls_line(&mut self, clock: Clock, out: &mut Vec<u8>) {
        if self.ended || self.tools.is_empty() || self.api != Api::Chat {
            return;
        }
        let tools = std::mem::take(&mut self.tools);
        let line = Line {
            model: &self.model,
            created_at: created_at(clock.wall),
            message: Some(OutMessage {
                role: "assistant",
                content: "",
                thinking: None,
                tool_calls: tools
                    .iter()
                    .map(|(name, arguments)| OutToolCall {
                        function: OutFunction {
                            name,
                            arguments: arguments_value(arguments),
                        },
                    })
                    .collect(),
            }),
            response: None,
            done: false,
            end: None,
        };
        out.extend_from_slice(&to_line(&line));
    }

    fn done_line(&mut self, clock: Clock, out: &mut Vec<u8>) {
        self.tool_calls_line(clock, out);
        let reason = done_reason(self.finish_reason.as_deref());
        let end = Final::new(
            reason,
            self.usage,
            self.started,
            self.first_token,
            clock.now,
        );
        let line = Line {
            model: &self.model,
            created_at: created_at(clock.wall),
            message: (self.api == Api::Chat).then_some(OutMessage {
                role: "assistant",
                content: "",
                thinking: None,
                tool_calls: Vec::new(),
            }),
            response: (self.api == Api::Generate).then_some(""),
            done: true,
            end: Some(end),
        };
        out.extend_from_slice(&to_line(&line));
        self.ended = true;
    }

    fn error_line(&mut self, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        out.extend_from_slice(&super::error_body(message));
        out.push(b'\n');
        self.ended = true;
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
