//! The Responses API bodies as [`super::ResponseMeter`] drives them: a stream (metered by
//! [`ResponsesMeter`], passed through unchanged, ended with an `error` event if cut) and a
//! non-streaming body (its top-level `id`, `status`, `usage`, `error`).

use super::path_scan::{PathScanner, PathTarget};
use super::responses::{
    apply_usage, error_info, parse_usage, ResponsesMeter, MAX_ERROR_FIELD_BYTES,
    MAX_RESPONSE_ID_BYTES, MAX_USAGE_BYTES,
};
use super::usage::{ChoiceFinish, UsageRecord};
use std::time::Instant;

// Target indexes of the non-streaming body scanner.
const B_ID: usize = 0;
const B_STATUS: usize = 1;
const B_USAGE: usize = 2;
const B_ERROR: usize = 3;

const BODY_TARGETS: &[PathTarget] = &[
    PathTarget {
        path: &[b"id"],
        max: MAX_RESPONSE_ID_BYTES,
    },
    PathTarget {
        path: &[b"status"],
        max: 64,
    },
    PathTarget {
        path: &[b"usage"],
        max: MAX_USAGE_BYTES,
    },
    PathTarget {
        path: &[b"error"],
        max: MAX_ERROR_FIELD_BYTES,
    },
];

/// Meters a non-streaming Responses body (or its error) as it passes.
#[derive(Debug)]
pub struct ResponsesJson {
    scanner: PathScanner,
    bytes: u64,
}

impl Default for ResponsesJson {
    fn default() -> Self {
        Self {
            scanner: PathScanner::new(BODY_TARGETS),
            bytes: 0,
        }
    }
}

impl ResponsesJson {
    pub fn feed(&mut self, piece: &[u8]) {
        self.bytes += piece.len() as u64;
        self.scanner.feed(piece);
    }

    /// The top-level `id` (a response's, once it passed).
    pub fn response_id(&self) -> Option<&str> {
        self.scanner.string(B_ID)
    }

    pub fn carried_bytes(&self) -> usize {
        self.scanner.carried_bytes()
    }

    pub fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        let s = &self.scanner;
        let mut record = UsageRecord {
            overflowed: s.overflowed(),
            truncated: self.bytes > 0 && !s.complete(),
            finish_reasons: s
                .string(B_STATUS)
                .map(|r| {
                    vec![ChoiceFinish {
                        index: 0,
                        reason: r.to_string(),
                    }]
                })
                .unwrap_or_default(),
            upstream_error: s
                .value(B_ERROR)
                .and_then(|raw| error_info(raw, "server_error")),
            body_bytes: self.bytes,
            ..UsageRecord::default()
        };
        apply_usage(
            &mut record,
            parse_usage(s.value(B_USAGE)),
            0,
            prompt_tokens_hint,
        );
        record
    }
}

/// The `error` event appended to a cut stream: the Responses API's error event
/// (`type`, `code`, `message`, `param`, `sequence_number`) plus an OpenAI `error` object, the
/// truthy `error` the OpenAI SDKs raise `APIError` on.
pub fn truncation_error_event(sequence_number: u64, message: &str) -> Vec<u8> {
    let message = serde_json::Value::String(message.to_string());
    format!(
        "event: error\ndata: {{\"type\":\"error\",\"code\":\"stream_truncated\",\"message\":{message},\"param\":null,\"sequence_number\":{sequence_number},\"error\":{{\"message\":{message},\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}}}\n\n"
    )
    .into_bytes()
}

/// A Responses stream as [`super::ResponseMeter`] drives it: metered, passed through
/// unchanged, and ended with an `error` event if it was cut.
#[derive(Debug)]
pub struct ResponsesStream {
    meter: ResponsesMeter,
    ended: bool,
    truncated: bool,
    error_event: Option<bytes::Bytes>,
}

impl ResponsesStream {
    pub fn new(start: Instant) -> Self {
        Self {
            meter: ResponsesMeter::new(start),
            ended: false,
            truncated: false,
            error_event: None,
        }
    }

    pub fn meter(&self) -> &ResponsesMeter {
        &self.meter
    }

    pub fn on_piece(&mut self, piece: &[u8], now: Instant) {
        if !self.ended {
            self.meter.feed(piece, now);
        }
    }

    /// End of the body: for a cut stream, a terminator for a cut event and the error event.
    pub fn end(&mut self, append_error: bool) -> Option<bytes::Bytes> {
        if self.ended {
            return None;
        }
        self.ended = true;
        let end = self.meter.finish_stream();
        self.truncated = self.meter.terminal().is_none();
        if !(self.truncated && append_error) {
            return None;
        }
        let mut tail: Vec<u8> = match (end.mid_event, end.mid_line) {
            (false, _) => Vec::new(),
            (true, true) => b"\n\n".to_vec(),
            (true, false) => b"\n".to_vec(),
        };
        let event = truncation_error_event(self.meter.events(), super::TRUNCATION_MESSAGE);
        tail.extend_from_slice(&event);
        self.error_event = Some(bytes::Bytes::from(event));
        Some(bytes::Bytes::from(tail))
    }

    pub fn error_event(&self) -> Option<bytes::Bytes> {
        self.error_event.clone()
    }

    pub fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        let mut record = self.meter.record(prompt_tokens_hint);
        record.truncated = self.meter.terminal().is_none();
        record
    }
}
