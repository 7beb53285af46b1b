//! The per-request usage record: plain data that the rate limiter, the metrics and the access
//! log consume. Built by [`crate::metering::ResponseMeter::finish`].

use serde::Serialize;
use std::time::Duration;

/// Where the token numbers of a [`UsageRecord`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The upstream's own final `usage` (the `choices:[]` chunk, or a JSON body's `usage`).
    UpstreamUsage,
    /// Only per-chunk usage (`continuous_usage_stats`) was seen; the final usage chunk was not.
    /// The numbers are the upstream's count up to the last chunk that carried them.
    Continuous,
    /// No upstream usage: completion tokens estimated from the text seen (see
    /// [`estimate_completion_tokens`]); prompt tokens are the caller's hint.
    Estimated,
    /// Nothing to meter: no usage and no generated text.
    #[default]
    None,
}

impl UsageSource {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::UpstreamUsage => "upstream_usage",
            UsageSource::Continuous => "continuous",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

/// Summary of the gaps between successive token-bearing events (bounded memory, no Vec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GapSummary {
    pub count: u64,
    #[serde(serialize_with = "duration_us")]
    pub total: Duration,
    #[serde(serialize_with = "duration_us")]
    pub min: Duration,
    #[serde(serialize_with = "duration_us")]
    pub max: Duration,
}

impl GapSummary {
    pub fn add(&mut self, gap: Duration) {
        self.min = if self.count == 0 {
            gap
        } else {
            self.min.min(gap)
        };
        self.max = self.max.max(gap);
        self.total = self.total.saturating_add(gap);
        self.count += 1;
    }

    /// Mean gap, `None` before the second token-bearing event.
    pub fn mean(&self) -> Option<Duration> {
        let count = u32::try_from(self.count).ok().filter(|c| *c > 0)?;
        Some(self.total / count)
    }
}

/// Finish reason of one choice (`choices[].index`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChoiceFinish {
    pub index: u32,
    pub reason: String,
}

/// An upstream error, already in OpenAI terms (see [`crate::upstream_error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
}

/// One record per request. Token fields are what the operator bills.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UsageRecord {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_prompt_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub source: UsageSource,
    /// Estimate from the text seen, computed even when upstream usage exists (for comparison).
    pub estimated_completion_tokens: u64,
    /// Usage was present on content chunks (`continuous_usage_stats`, enabled per cluster config).
    pub continuous_usage: bool,
    /// Usage-only chunks removed from the client's stream.
    pub usage_chunks_stripped: u32,
    #[serde(serialize_with = "opt_duration_us")]
    pub ttft: Option<Duration>,
    pub inter_token: GapSummary,
    pub content_deltas: u64,
    pub tool_call_deltas: u64,
    /// Sorted by choice index.
    pub finish_reasons: Vec<ChoiceFinish>,
    /// An OpenAI-style stream ended without `[DONE]`, or any stream ended inside an event.
    pub truncated: bool,
    pub upstream_error: Option<UpstreamErrorInfo>,
    pub done_seen: bool,
    /// An event (or the JSON `usage` value) exceeded the size bound and was not metered; stripping
    /// and error rewriting were abandoned for the rest of the stream.
    pub overflowed: bool,
    /// SSE events with data (including `[DONE]`).
    pub events: u64,
    /// Events whose data was neither JSON nor `[DONE]`.
    pub unparsable_events: u64,
    /// Body bytes received from the upstream.
    pub body_bytes: u64,
}

/// Completion tokens estimated from the text seen when the upstream sent no usage.
///
/// Heuristic: the larger of `ceil(chars / 4)` (about 4 characters per token for English with
/// BPE tokenizers) and one token per content or tool-call delta (every delta carries at least
/// one token, which dominates for CJK text and for short tokens).
pub fn estimate_completion_tokens(chars: u64, deltas: u64) -> u64 {
    crate::estimate::tokens_for(chars).max(deltas)
}

fn duration_us<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn opt_duration_us<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration_us(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_takes_the_larger_heuristic() {
        assert_eq!(estimate_completion_tokens(0, 0), 0);
        assert_eq!(estimate_completion_tokens(9, 1), 3);
        assert_eq!(estimate_completion_tokens(4, 10), 10);
    }

    #[test]
    fn gap_summary_tracks_min_max_mean() {
        let mut g = GapSummary::default();
        assert_eq!(g.mean(), None);
        g.add(Duration::from_millis(30));
        g.add(Duration::from_millis(10));
        assert_eq!(g.min, Duration::from_millis(10));
        assert_eq!(g.max, Duration::from_millis(30));
        assert_eq!(g.mean(), Some(Duration::from_millis(20)));
    }

    #[test]
    fn record_serializes_durations_as_microseconds() {
        let r = UsageRecord {
            ttft: Some(Duration::from_millis(2)),
            ..UsageRecord::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ttft"], 2000);
        assert_eq!(v["source"], "none");
    }
}
