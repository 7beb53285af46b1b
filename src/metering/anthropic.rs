//! Meters Anthropic Messages streams (vLLM's `/v1/messages`, UPSTREAMS.md §11) and reads the
//! `usage` of a non-streaming Messages body.
//!
//! Events are `event: <type>\ndata: <json>` with the type repeated in the data's `type`:
//! `message_start` (`message.usage.input_tokens`, cache tokens), `content_block_*`
//! (`text_delta`, `thinking_delta`, `input_json_delta`, `signature_delta`), `message_delta`
//! (`delta.stop_reason`, `usage.output_tokens` cumulative and, from vLLM, `input_tokens`),
//! `message_stop` (the clean end; there is no `[DONE]`), `ping`, and `error`
//! (`{"type":"error","error":{"type","message"}}`). The meter never changes an event's bytes.

use std::borrow::Cow;
use std::time::Instant;

use serde::Deserialize;

use super::chunk::{PromptDetails, TextLen, WireUsage};
use super::usage::{
    estimate_completion_tokens, ChoiceFinish, GapSummary, UpstreamErrorInfo, UsageRecord,
    UsageSource,
};

/// Longest upstream error message kept in the record.
const MAX_RECORDED_MESSAGE_CHARS: usize = 512;

/// Anthropic's `usage`. `input_tokens` excludes the cache tokens, which are billed as input too.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessagesUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl MessagesUsage {
    /// All prompt tokens: uncached input plus cache writes and reads.
    pub fn prompt_tokens(&self) -> u64 {
        [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ]
        .into_iter()
        .flatten()
        .fold(0u64, u64::saturating_add)
    }

    /// The same numbers in the OpenAI terms the record uses (cached = cache reads).
    pub fn to_wire(self) -> WireUsage {
        WireUsage {
            prompt_tokens: Some(self.prompt_tokens()),
            completion_tokens: self.output_tokens,
            total_tokens: None,
            prompt_tokens_details: self.cache_read_input_tokens.map(|c| PromptDetails {
                cached_tokens: Some(c),
            }),
            completion_tokens_details: None,
        }
    }
}

/// Parses a Messages body's raw `usage` value (`None` if absent, `null` or malformed).
pub fn parse_usage(raw: &[u8]) -> Option<WireUsage> {
    serde_json::from_slice::<Option<MessagesUsage>>(raw.trim_ascii())
        .ok()
        .flatten()
        .map(MessagesUsage::to_wire)
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    text: Option<TextLen>,
    #[serde(default)]
    thinking: Option<TextLen>,
    #[serde(default)]
    partial_json: Option<TextLen>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Per-stream state of an Anthropic Messages stream.
#[derive(Debug)]
pub struct MessagesMeter {
    start: Instant,
    start_usage: Option<MessagesUsage>,
    delta_usage: Option<MessagesUsage>,
    stop_reason: Option<String>,
    content_deltas: u64,
    tool_call_deltas: u64,
    text_chars: u64,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    gaps: GapSummary,
    upstream_error: Option<UpstreamErrorInfo>,
    stop_seen: bool,
    events: u64,
    unparsable_events: u64,
}

impl MessagesMeter {
    /// `start` is when the request was sent upstream (TTFT is measured from it).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            start_usage: None,
            delta_usage: None,
            stop_reason: None,
            content_deltas: 0,
            tool_call_deltas: 0,
            text_chars: 0,
            first_token_at: None,
            last_token_at: None,
            gaps: GapSummary::default(),
            upstream_error: None,
            stop_seen: false,
            events: 0,
            unparsable_events: 0,
        }
    }

    /// `message_stop` was seen: the stream ended cleanly.
    pub fn stop_seen(&self) -> bool {
        self.stop_seen
    }

    pub fn error_seen(&self) -> bool {
        self.upstream_error.is_some()
    }

    /// A token (text, reasoning or tool-call delta) has arrived.
    pub fn first_token_seen(&self) -> bool {
        self.first_token_at.is_some()
    }

    /// Meters one event's data (received at `now`).
    pub fn observe(&mut self, data: &[u8], now: Instant) {
        self.events += 1;
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data.trim_ascii()) else {
            self.unparsable_events += 1;
            return;
        };
        match event.kind.as_ref() {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.start_usage = Some(usage);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = event.delta {
                    self.on_block_delta(&delta, now);
                }
            }
            "message_delta" => {
                if let Some(usage) = event.usage {
                    self.delta_usage = Some(usage);
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(reason);
                }
            }
            "message_stop" => self.stop_seen = true,
            "error" => self.on_error(event.error),
            _ => {}
        }
    }

    fn on_block_delta(&mut self, delta: &Delta, now: Instant) {
        let text = delta.text.map_or(0, |t| t.0) + delta.thinking.map_or(0, |t| t.0);
        let json = delta.partial_json.map_or(0, |t| t.0);
        if text > 0 {
            self.content_deltas += 1;
        }
        if json > 0 {
            self.tool_call_deltas += 1;
        }
        if text + json > 0 {
            self.text_chars += text + json;
            if self.first_token_at.is_none() {
                self.first_token_at = Some(now);
            }
            if let Some(prev) = self.last_token_at {
                self.gaps.add(now.saturating_duration_since(prev));
            }
            self.last_token_at = Some(now);
        }
    }

    fn on_error(&mut self, error: Option<ErrorObject>) {
        let (kind, message) = error.map_or((None, None), |e| (e.kind, e.message));
        let kind = kind.unwrap_or_else(|| "api_error".to_string());
        self.upstream_error = Some(UpstreamErrorInfo {
            message: message
                .unwrap_or_default()
                .chars()
                .take(MAX_RECORDED_MESSAGE_CHARS)
                .collect(),
            code: Some(kind.clone()),
            kind,
        });
    }

    /// The record so far. Input tokens come from `message_start` (or the last `message_delta`
    /// when it said 0), output tokens from the last `message_delta`; without a `message_delta`
    /// (a cut stream) the output is estimated from the text seen. `prompt_tokens_hint` is used
    /// only when no event carried input tokens.
    pub fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        let deltas = self.content_deltas + self.tool_call_deltas;
        let estimate = estimate_completion_tokens(self.text_chars, deltas);
        let mut record = UsageRecord {
            estimated_completion_tokens: estimate,
            ttft: self
                .first_token_at
                .map(|t| t.saturating_duration_since(self.start)),
            inter_token: self.gaps,
            content_deltas: self.content_deltas,
            tool_call_deltas: self.tool_call_deltas,
            finish_reasons: self
                .stop_reason
                .iter()
                .map(|reason| ChoiceFinish {
                    index: 0,
                    reason: reason.clone(),
                })
                .collect(),
            upstream_error: self.upstream_error.clone(),
            done_seen: self.stop_seen,
            events: self.events,
            unparsable_events: self.unparsable_events,
            ..UsageRecord::default()
        };
        let input = [self.start_usage, self.delta_usage]
            .into_iter()
            .flatten()
            .find(|u| u.prompt_tokens() > 0);
        record.prompt_tokens = input.map_or(prompt_tokens_hint, |u| u.prompt_tokens());
        record.cached_prompt_tokens = input.and_then(|u| u.cache_read_input_tokens);
        match self.delta_usage.and_then(|u| u.output_tokens) {
            Some(output) => {
                record.completion_tokens = output;
                record.source = UsageSource::UpstreamUsage;
            }
            None if estimate > 0 => {
                record.completion_tokens = estimate;
                record.source = UsageSource::Estimated;
            }
            None if input.is_some() => record.source = UsageSource::UpstreamUsage,
            None => {}
        }
        record.total_tokens = record
            .prompt_tokens
            .saturating_add(record.completion_tokens);
        record
    }
}
