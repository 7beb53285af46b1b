//! Meters the events of one streamed response (chat, completions, Triton `generate_stream`).
//!
//! Takes the **last** `usage` seen (usage is cumulative, summed over `n` choices), never counts
//! chunks for billing. Counts deltas, per-choice finish reasons, time to first token and the
//! gaps between token-bearing events, and tells the caller which events to strip or rewrite.

use super::chunk::{Chunk, WireUsage};
use super::chunk_skim::skim;
use super::usage::{
    estimate_completion_tokens, ChoiceFinish, GapSummary, UpstreamErrorInfo, UsageRecord,
    UsageSource,
};
use crate::upstream_error::normalize_stream_error_event;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Which protocol the stream speaks; decides what a clean end looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// OpenAI-style SSE (vLLM, trtllm-serve, OpenAI): must end with `[DONE]`.
    OpenAi,
    /// Triton `generate_stream`: no `[DONE]`, no usage, `text_output` deltas.
    TritonGenerate,
    /// Anthropic Messages (vLLM `/v1/messages`): must end with `message_stop` (or an `error`
    /// event); metered by [`super::anthropic::MessagesMeter`].
    Anthropic,
}

/// What the caller should do with the bytes of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventVerdict {
    Keep,
    /// `choices: []` with a non-null `usage`: removable when the proxy injected `include_usage`.
    UsageOnly,
    /// An upstream error event; `Some` holds the OpenAI-shaped data to send instead.
    Error(Option<Bytes>),
}

/// Longest upstream error message kept in the record.
const MAX_RECORDED_MESSAGE_CHARS: usize = 512;
/// Most choices whose finish reason is recorded (n is small in practice).
const MAX_RECORDED_CHOICES: usize = 128;

#[derive(Debug)]
pub struct StreamMeter {
    start: Instant,
    last_usage: Option<WireUsage>,
    usage_on_content_chunks: bool,
    usage_only_chunks: u32,
    finish_reasons: Vec<ChoiceFinish>,
    content_deltas: u64,
    tool_call_deltas: u64,
    text_chars: u64,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    gaps: GapSummary,
    upstream_error: Option<UpstreamErrorInfo>,
    done_seen: bool,
    events: u64,
    unparsable_events: u64,
}

impl StreamMeter {
    /// `start` is when the request was sent upstream (TTFT is measured from it).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            last_usage: None,
            usage_on_content_chunks: false,
            usage_only_chunks: 0,
            finish_reasons: Vec::new(),
            content_deltas: 0,
            tool_call_deltas: 0,
            text_chars: 0,
            first_token_at: None,
            last_token_at: None,
            gaps: GapSummary::default(),
            upstream_error: None,
            done_seen: false,
            events: 0,
            unparsable_events: 0,
        }
    }

    pub fn done_seen(&self) -> bool {
        self.done_seen
    }

    /// A token (text, reasoning or tool-call delta) has arrived.
    pub fn first_token_seen(&self) -> bool {
        self.first_token_at.is_some()
    }

    pub fn error_seen(&self) -> bool {
        self.upstream_error.is_some()
    }

    /// Meters one event's data (received at `now`) and says what to do with its bytes.
    pub fn observe(&mut self, data: &[u8], now: Instant) -> EventVerdict {
        self.events += 1;
        let data = data.trim_ascii();
        // openai-python stops at data starting with `[DONE]`; later events never reach clients.
        if data.starts_with(b"[DONE]") {
            self.done_seen = true;
            return EventVerdict::Keep;
        }
        if self.done_seen {
            return EventVerdict::Keep;
        }
        let parsed: Chunk<'_>;
        let facts = match skim(data) {
            Some(facts) => facts,
            None => {
                let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
                    self.unparsable_events += 1;
                    return EventVerdict::Keep;
                };
                parsed = chunk;
                parsed.facts()
            }
        };
        self.content_deltas += facts.content_deltas;
        self.tool_call_deltas += facts.tool_call_deltas;
        self.text_chars += facts.text_chars + facts.tool_call_chars;
        for &(index, reason) in &facts.finishes {
            self.record_finish(index, reason);
        }
        if facts.token_event() {
            self.token_at(now);
        }
        if let Some(usage) = facts.usage {
            self.last_usage = Some(usage);
            self.usage_on_content_chunks |= facts.has_choices;
            if facts.empty_choices {
                self.usage_only_chunks += 1;
                return EventVerdict::UsageOnly;
            }
        }
        if facts.error {
            if let Some((error, replacement)) = normalize_stream_error_event(data) {
                self.upstream_error = Some(UpstreamErrorInfo {
                    message: error
                        .message
                        .chars()
                        .take(MAX_RECORDED_MESSAGE_CHARS)
                        .collect(),
                    kind: error.kind,
                    code: error.code,
                });
                return EventVerdict::Error(replacement);
            }
        }
        EventVerdict::Keep
    }

    fn token_at(&mut self, now: Instant) {
        if self.first_token_at.is_none() {
            self.first_token_at = Some(now);
        }
        if let Some(prev) = self.last_token_at {
            self.gaps.add(now.saturating_duration_since(prev));
        }
        self.last_token_at = Some(now);
    }

    fn record_finish(&mut self, index: u32, reason: &str) {
        match self
            .finish_reasons
            .binary_search_by_key(&index, |f| f.index)
        {
            Ok(i) => reason.clone_into(&mut self.finish_reasons[i].reason),
            Err(i) if self.finish_reasons.len() < MAX_RECORDED_CHOICES => {
                self.finish_reasons.insert(
                    i,
                    ChoiceFinish {
                        index,
                        reason: reason.to_owned(),
                    },
                );
            }
            Err(_) => {}
        }
    }

    /// The record so far; `prompt_tokens_hint` is used only when the upstream sent no usage.
    /// Stream-level flags (`truncated`, `overflowed`, byte counts) are the caller's to set.
    pub fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        let deltas = self.content_deltas + self.tool_call_deltas;
        let estimate = estimate_completion_tokens(self.text_chars, deltas);
        let mut record = UsageRecord {
            estimated_completion_tokens: estimate,
            continuous_usage: self.usage_on_content_chunks,
            ttft: self
                .first_token_at
                .map(|t| t.saturating_duration_since(self.start)),
            inter_token: self.gaps,
            content_deltas: self.content_deltas,
            tool_call_deltas: self.tool_call_deltas,
            finish_reasons: self.finish_reasons.clone(),
            upstream_error: self.upstream_error.clone(),
            done_seen: self.done_seen,
            events: self.events,
            unparsable_events: self.unparsable_events,
            ..UsageRecord::default()
        };
        if let Some(usage) = self.last_usage {
            record.prompt_tokens = usage.prompt_tokens.unwrap_or(0);
            record.completion_tokens = usage.completion_tokens.unwrap_or(0);
            record.total_tokens = usage.total();
            record.cached_prompt_tokens = usage.cached_tokens();
            record.reasoning_tokens = usage.reasoning_tokens();
            record.source = if self.usage_only_chunks == 0 && self.usage_on_content_chunks {
                UsageSource::Continuous
            } else {
                UsageSource::UpstreamUsage
            };
        } else if estimate > 0 {
            record.prompt_tokens = prompt_tokens_hint;
            record.completion_tokens = estimate;
            record.total_tokens = prompt_tokens_hint.saturating_add(estimate);
            record.source = UsageSource::Estimated;
        } else {
            record.prompt_tokens = prompt_tokens_hint;
            record.total_tokens = prompt_tokens_hint;
        }
        record
    }

    /// Time since the last token-bearing event (for idle detection by the caller).
    pub fn since_last_token(&self, now: Instant) -> Option<Duration> {
        self.last_token_at.map(|t| now.saturating_duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(events: &[&str]) -> (StreamMeter, Vec<EventVerdict>) {
        let t0 = Instant::now();
        let mut m = StreamMeter::new(t0);
        let verdicts = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                m.observe(
                    e.as_bytes(),
                    t0 + Duration::from_millis(10 * (i as u64 + 1)),
                )
            })
            .collect();
        (m, verdicts)
    }

    #[test]
    fn last_usage_wins_and_usage_only_chunk_is_flagged() {
        let (m, v) = meter(&[
            r#"{"choices":[{"index":0,"delta":{"content":"hé"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
            r#"{"choices":[],"usage":{"completion_tokens":2,"prompt_tokens":5,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":3}}}"#,
            "[DONE]",
        ]);
        assert_eq!(v[2], EventVerdict::UsageOnly);
        let r = m.record(0);
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (5, 2, 7)
        );
        assert_eq!(r.cached_prompt_tokens, Some(3));
        assert_eq!(r.source, UsageSource::UpstreamUsage);
        assert!(r.continuous_usage && r.done_seen);
        assert_eq!(r.ttft, Some(Duration::from_millis(10)));
        assert_eq!(
            r.finish_reasons,
            vec![ChoiceFinish {
                index: 0,
                reason: "stop".into()
            }]
        );
    }

    #[test]
    fn continuous_usage_without_final_chunk() {
        let (m, _) = meter(&[
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        ]);
        assert_eq!(m.record(0).source, UsageSource::Continuous);
    }

    #[test]
    fn estimate_without_usage_and_gaps() {
        let (m, _) = meter(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hello world, this is text"}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"text":"x","finish_reason":"length"}]}"#,
        ]);
        let r = m.record(11);
        assert_eq!(r.source, UsageSource::Estimated);
        assert_eq!((r.content_deltas, r.tool_call_deltas), (2, 1));
        assert_eq!(r.completion_tokens, 8); // ceil((25 + 3 + 1) / 4)
        assert_eq!(r.prompt_tokens, 11);
        assert_eq!(r.ttft, Some(Duration::from_millis(20)));
        assert_eq!(r.inter_token.count, 2);
        assert_eq!(r.inter_token.max, Duration::from_millis(10));
    }

    #[test]
    fn triton_text_output_and_error_events() {
        let (m, v) = meter(&[
            r#"{"model_name":"ensemble","text_output":"Merlion"}"#,
            r#"{"error":"in ensemble 'ensemble', Failed to process"}"#,
        ]);
        assert!(matches!(v[1], EventVerdict::Error(Some(_))));
        let r = m.record(0);
        assert_eq!(r.content_deltas, 1);
        assert_eq!(r.upstream_error.unwrap().kind, "server_error");
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let (m, v) = meter(&["not json", "{\"choices\":5}", ""]);
        assert!(v.iter().all(|v| *v == EventVerdict::Keep));
        assert_eq!(m.record(0).unparsable_events, 3);
    }
}
