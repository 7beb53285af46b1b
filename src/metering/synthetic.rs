//! Synthetic upstream streams for tests and benchmarks, plus a one-call driver
//! ([`meter_in_pieces`]) for the bench harness.

use super::response::{MeterConfig, ResponseMeter};
use super::stream::StreamProtocol;
use super::strip::BodyAction;
use super::usage::UsageRecord;
use serde_json::json;
use std::ops::Range;
use std::time::Instant;

/// Shape of a generated vLLM/trtllm-style chat stream.
#[derive(Debug, Clone)]
pub struct ChatStreamSpec {
    /// `n`: choices per request; every content chunk carries one delta per choice.
    pub choices: u32,
    /// Content chunks per choice (each counted as one token).
    pub deltas: usize,
    /// Add a tool call (3 deltas, one token each) on choice 0.
    pub tool_calls: bool,
    /// `usage` on every chunk (`continuous_usage_stats`).
    pub continuous_usage: bool,
    /// Final `choices:[]` usage chunk.
    pub usage_chunk: bool,
    /// `\r\n` line endings.
    pub crlf: bool,
    /// Comment blocks, `event:`/`id:` lines, and some JSON split over two `data:` lines.
    pub decorations: bool,
    /// trtllm-serve writes the first event as `data: {…} \n\n`.
    pub trtllm_trailing_space: bool,
    /// End with `data: [DONE]`.
    pub done: bool,
}

impl Default for ChatStreamSpec {
    fn default() -> Self {
        Self {
            choices: 1,
            deltas: 8,
            tool_calls: false,
            continuous_usage: false,
            usage_chunk: true,
            crlf: false,
            decorations: false,
            trtllm_trailing_space: false,
            done: true,
        }
    }
}

/// A generated stream and what metering it must give.
#[derive(Debug, Clone)]
pub struct SyntheticStream {
    pub body: Vec<u8>,
    /// Bytes of the usage-only event (with its blank line), to be removed when stripping.
    pub usage_event: Option<Range<usize>>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

const TEXTS: &[&str] = &[
    "Hello",
    " café",
    " 日本",
    " 🙂",
    "\n",
    " \"quoted\"",
    " tab\t",
    " end",
    " ü",
];
const PROMPT_TOKENS: u64 = 17;

/// Generates a chat stream per `spec`.
pub fn chat_stream(spec: &ChatStreamSpec) -> SyntheticStream {
    let mut w = EventWriter::new(spec);
    let mut completion = 0u64;
    let per_chunk_usage = |completion: u64| spec.continuous_usage.then(|| usage(completion));
    let roles: Vec<_> = (0..spec.choices)
        .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
        .collect();
    w.push(chunk(json!(roles), per_chunk_usage(0)));
    for d in 0..spec.deltas {
        let deltas: Vec<_> = (0..spec.choices)
            .map(|i| json!({"index": i, "delta": {"content": TEXTS[(d + i as usize) % TEXTS.len()]}, "logprobs": null, "finish_reason": null}))
            .collect();
        completion += u64::from(spec.choices);
        w.push(chunk(json!(deltas), per_chunk_usage(completion)));
    }
    if spec.tool_calls {
        for call in tool_call_deltas() {
            completion += 1;
            let c = json!([{"index": 0, "delta": {"tool_calls": call}, "finish_reason": null}]);
            w.push(chunk(c, per_chunk_usage(completion)));
        }
    }
    let finishes: Vec<_> = (0..spec.choices)
        .map(|i| json!({"index": i, "delta": {}, "finish_reason": if spec.tool_calls && i == 0 { "tool_calls" } else { "stop" }}))
        .collect();
    w.push(chunk(json!(finishes), per_chunk_usage(completion)));
    let usage_event = spec
        .usage_chunk
        .then(|| w.push(chunk(json!([]), Some(usage(completion)))));
    if spec.done {
        let nl = w.nl;
        w.body
            .extend_from_slice(format!("data: [DONE]{nl}{nl}").as_bytes());
    }
    SyntheticStream {
        body: w.body,
        usage_event,
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens: completion,
    }
}

/// Writes SSE events with the spec's framing quirks (line endings, decorations, trtllm space).
struct EventWriter<'s> {
    spec: &'s ChatStreamSpec,
    nl: &'static str,
    body: Vec<u8>,
    events: usize,
}

impl<'s> EventWriter<'s> {
    fn new(spec: &'s ChatStreamSpec) -> Self {
        Self {
            spec,
            nl: if spec.crlf { "\r\n" } else { "\n" },
            body: Vec::new(),
            events: 0,
        }
    }

    /// Appends one event; returns its bytes (without a keep-alive comment before it).
    fn push(&mut self, value: serde_json::Value) -> Range<usize> {
        let (spec, nl, events) = (self.spec, self.nl, self.events);
        let body = &mut self.body;
        let mut text = value.to_string();
        if spec.decorations && events % 3 == 1 {
            body.extend_from_slice(format!(": keep-alive{nl}{nl}").as_bytes());
        }
        let start_of_event = body.len();
        if spec.decorations && events % 4 == 2 {
            body.extend_from_slice(format!("event: message{nl}id: {events}{nl}").as_bytes());
            if let Some(comma) = text.find(',') {
                text.replace_range(comma + 1..comma + 1, &format!("{nl}data:"));
            }
        }
        let trailing = if spec.trtllm_trailing_space && events == 0 {
            " "
        } else {
            ""
        };
        body.extend_from_slice(format!("data: {text}{trailing}{nl}{nl}").as_bytes());
        self.events += 1;
        start_of_event..body.len()
    }
}

fn usage(completion: u64) -> serde_json::Value {
    json!({"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + completion, "completion_tokens": completion})
}

fn chunk(choices: serde_json::Value, usage: Option<serde_json::Value>) -> serde_json::Value {
    let mut c = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices});
    if let Some(u) = usage {
        c["usage"] = u;
    }
    c
}

/// A tool call on choice 0 in three deltas (one token each), its arguments split mid-JSON.
fn tool_call_deltas() -> [serde_json::Value; 3] {
    [
        json!([{"id": "call_1", "type": "function", "index": 0, "function": {"name": "search"}}]),
        json!([{"index": 0, "function": {"arguments": "{\"q\": \"caf"}}]),
        json!([{"index": 0, "function": {"arguments": "é 🙂\"}"}}]),
    ]
}

/// A large single-choice stream (≈230 bytes per event) for throughput measurement.
pub fn large_chat_stream(events: usize) -> Vec<u8> {
    chat_stream(&ChatStreamSpec {
        deltas: events,
        ..ChatStreamSpec::default()
    })
    .body
}

/// Meters `body` fed in `piece_len`-byte pieces (all at time `now`); returns the record and
/// the number of bytes the client would receive. The entry point for the bench harness.
pub fn meter_in_pieces(
    body: &[u8],
    piece_len: usize,
    strip: bool,
    now: Instant,
) -> (UsageRecord, usize) {
    let mut meter = ResponseMeter::new(MeterConfig::sse(StreamProtocol::OpenAi, strip), now);
    let mut sent = 0;
    for piece in body.chunks(piece_len.max(1)) {
        sent += match meter.on_body(piece, now) {
            BodyAction::Passthrough => piece.len(),
            BodyAction::Replace(bytes) => bytes.len(),
        };
    }
    sent += meter.on_end(now).map_or(0, |b| b.len());
    (meter.finish(now), sent)
}
