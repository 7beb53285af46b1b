//! Metering of OpenAI Responses API bodies (vLLM `POST /v1/responses`), streamed and not.
//!
//! A stream is `event: <type>\ndata: <json>\n\n` events with no `[DONE]`; usage arrives once,
//! in `response.completed` (or `response.incomplete` / `response.failed`), whose `response`
//! is the whole response object — all output text again. So events are never held: the
//! framer below hands each `data` line's bytes to a [`PathScanner`] as they arrive, which keeps
//! only `type`, `response.id`, `response.status`, `response.usage` and an error's fields
//! (each bounded). Memory per stream is bounded whatever an event's size.
//!
//! The stream's end: a terminal event (`response.completed`, `response.incomplete`,
//! `response.failed`, `error`), else it was cut (truncated) and the client gets an `error`
//! event (see [`truncation_error_event`]).

use super::path_scan::{PathScanner, PathTarget};
use super::usage::{
    estimate_completion_tokens, ChoiceFinish, GapSummary, UpstreamErrorInfo, UsageRecord,
    UsageSource,
};
use memchr::memchr2;
use serde::Deserialize;
use std::time::Instant;

/// Longest response id recorded (vLLM's are `resp_` + 32 hex digits).
pub const MAX_RESPONSE_ID_BYTES: usize = 256;
pub(super) const MAX_ERROR_FIELD_BYTES: usize = 2048;
pub(super) const MAX_USAGE_BYTES: usize = 4096;

// Target indexes of the event scanner.
const T_TYPE: usize = 0;
const T_ID: usize = 1;
const T_STATUS: usize = 2;
const T_USAGE: usize = 3;
const T_ERROR: usize = 4;
const T_CODE: usize = 5;
const T_MESSAGE: usize = 6;
const T_DELTA: usize = 7;

const EVENT_TARGETS: &[PathTarget] = &[
    PathTarget {
        path: &[b"type"],
        max: 64,
    },
    PathTarget {
        path: &[b"response", b"id"],
        max: MAX_RESPONSE_ID_BYTES,
    },
    PathTarget {
        path: &[b"response", b"status"],
        max: 64,
    },
    PathTarget {
        path: &[b"response", b"usage"],
        max: MAX_USAGE_BYTES,
    },
    PathTarget {
        path: &[b"response", b"error"],
        max: MAX_ERROR_FIELD_BYTES,
    },
    PathTarget {
        path: &[b"code"],
        max: 256,
    },
    PathTarget {
        path: &[b"message"],
        max: MAX_ERROR_FIELD_BYTES,
    },
    PathTarget {
        path: &[b"delta"],
        max: 0,
    },
];

/// The Responses API's `usage` object.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponsesUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<OutputDetails>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

pub(super) fn parse_usage(raw: Option<&[u8]>) -> Option<ResponsesUsage> {
    serde_json::from_slice::<Option<ResponsesUsage>>(raw?)
        .ok()
        .flatten()
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

pub(super) fn error_info(raw: &[u8], default_kind: &str) -> Option<UpstreamErrorInfo> {
    let e = serde_json::from_slice::<Option<ErrorFields>>(raw).ok()??;
    Some(UpstreamErrorInfo {
        message: e.message.unwrap_or_default(),
        kind: e.kind.unwrap_or_else(|| default_kind.to_string()),
        code: e.code.map(|c| match c {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
    })
}

/// How the stream ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// `response.completed` (its `status` may still say `incomplete` or `cancelled`).
    Completed,
    Incomplete,
    Failed,
    /// A top-level `error` event.
    Error,
}

/// Which field of the SSE line the framer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Reading the field name (bytes so far in `name`).
    Name,
    /// After the colon: one leading space is dropped.
    ValueStart(Field),
    Value(Field),
}

/// Meters one Responses stream; see the module docs.
#[derive(Debug)]
pub struct ResponsesMeter {
    start: Instant,
    line: Line,
    name: [u8; 8],
    name_len: usize,
    line_nonempty: bool,
    pending_cr: bool,
    event_has_fields: bool,
    data_lines: u32,
    event_name: Vec<u8>,
    scanner: PathScanner,
    response_id: Option<String>,
    status: Option<String>,
    usage: Option<ResponsesUsage>,
    terminal: Option<Terminal>,
    upstream_error: Option<UpstreamErrorInfo>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    gaps: GapSummary,
    deltas: u64,
    text_bytes: u64,
    events: u64,
    unparsable_events: u64,
    overflowed: bool,
    /// When the current piece arrived (token times).
    now: Option<Instant>,
}

/// What [`ResponsesMeter::finish_stream`] reports about the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    pub mid_event: bool,
    pub mid_line: bool,
}

impl ResponsesMeter {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            line: Line::Name,
            name: [0; 8],
            name_len: 0,
            line_nonempty: false,
            pending_cr: false,
            event_has_fields: false,
            data_lines: 0,
            event_name: Vec::new(),
            scanner: PathScanner::new(EVENT_TARGETS),
            response_id: None,
            status: None,
            usage: None,
            terminal: None,
            upstream_error: None,
            first_token_at: None,
            last_token_at: None,
            gaps: GapSummary::default(),
            deltas: 0,
            text_bytes: 0,
            events: 0,
            unparsable_events: 0,
            overflowed: false,
            now: None,
        }
    }

    /// The response's id, once `response.created` (or any event carrying it) passed.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    pub fn terminal(&self) -> Option<Terminal> {
        self.terminal
    }

    /// Events seen (for the `sequence_number` of an appended error event).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes held (bounded by the scanner's targets).
    /// The first output-text delta has arrived.
    pub fn first_token_seen(&self) -> bool {
        self.first_token_at.is_some()
    }

    pub fn carried_bytes(&self) -> usize {
        self.scanner.carried_bytes() + self.event_name.len()
    }

    pub fn feed(&mut self, piece: &[u8], now: Instant) {
        self.now = Some(now);
        let mut pos = 0;
        if self.pending_cr && !piece.is_empty() {
            self.pending_cr = false;
            if piece[0] == b'\n' {
                pos = 1;
            }
        }
        while pos < piece.len() {
            if let Line::Value(Field::Data) = self.line {
                let run = memchr2(b'\n', b'\r', &piece[pos..]).unwrap_or(piece.len() - pos);
                self.scanner.feed(&piece[pos..pos + run]);
                self.line_nonempty |= run > 0;
                pos += run;
                if pos == piece.len() {
                    break;
                }
            }
            let b = piece[pos];
            pos += 1;
            match b {
                b'\n' => self.end_line(),
                b'\r' => {
                    self.end_line();
                    if pos == piece.len() {
                        self.pending_cr = true;
                    } else if piece[pos] == b'\n' {
                        pos += 1;
                    }
                }
                _ => self.line_byte(b),
            }
        }
    }

    fn line_byte(&mut self, b: u8) {
        self.line_nonempty = true;
        match self.line {
            Line::Name if b == b':' => {
                let field = match &self.name[..self.name_len] {
                    b"data" => Field::Data,
                    b"event" => Field::Event,
                    _ => Field::Other,
                };
                self.start_field(field);
                self.line = Line::ValueStart(field);
            }
            Line::Name => {
                if self.name_len < self.name.len() {
                    self.name[self.name_len] = b;
                }
                self.name_len = (self.name_len + 1).min(self.name.len());
            }
            Line::ValueStart(field) => {
                self.line = Line::Value(field);
                if b != b' ' {
                    self.value_byte(field, b);
                }
            }
            Line::Value(field) => self.value_byte(field, b),
        }
    }

    fn start_field(&mut self, field: Field) {
        self.event_has_fields = true;
        match field {
            Field::Data => {
                if self.data_lines > 0 {
                    self.scanner.feed(b"\n");
                }
                self.data_lines += 1;
            }
            Field::Event => self.event_name.clear(),
            Field::Other => {}
        }
    }

    fn value_byte(&mut self, field: Field, b: u8) {
        match field {
            Field::Data => self.scanner.feed(&[b]),
            Field::Event if self.event_name.len() < 64 => self.event_name.push(b),
            Field::Event | Field::Other => {}
        }
    }

    fn end_line(&mut self) {
        if !self.line_nonempty {
            self.dispatch();
        } else if self.line == Line::Name {
            // A field name without a colon: the whole line is the name, the value empty.
            let field = match &self.name[..self.name_len] {
                b"data" => Field::Data,
                b"event" => Field::Event,
                _ => Field::Other,
            };
            let comment = self.name_len == 0;
            if !comment {
                self.start_field(field);
            }
        }
        self.line = Line::Name;
        self.name_len = 0;
        self.line_nonempty = false;
    }

    fn dispatch(&mut self) {
        if self.data_lines > 0 {
            self.on_event();
        }
        self.scanner.reset();
        self.event_name.clear();
        self.data_lines = 0;
        self.event_has_fields = false;
    }

    fn on_event(&mut self) {
        self.events += 1;
        let s = &self.scanner;
        self.overflowed |= s.overflowed();
        if !s.complete() {
            self.unparsable_events += 1;
        }
        let kind = s
            .string(T_TYPE)
            .map(str::to_string)
            .or_else(|| String::from_utf8(self.event_name.clone()).ok())
            .unwrap_or_default();
        if self.response_id.is_none() {
            self.response_id = s.string(T_ID).map(str::to_string);
        }
        if kind.ends_with(".delta") {
            self.deltas += 1;
            self.text_bytes += s.len(T_DELTA).saturating_sub(2);
            let now = self.now.unwrap_or(self.start);
            if self.first_token_at.is_none() {
                self.first_token_at = Some(now);
            }
            if let Some(prev) = self.last_token_at {
                self.gaps.add(now.saturating_duration_since(prev));
            }
            self.last_token_at = Some(now);
        }
        let terminal = match kind.as_str() {
            "response.completed" => Terminal::Completed,
            "response.incomplete" => Terminal::Incomplete,
            "response.failed" => Terminal::Failed,
            "error" => Terminal::Error,
            _ => return,
        };
        if self.terminal.is_some() {
            return;
        }
        self.terminal = Some(terminal);
        self.status = s.string(T_STATUS).map(str::to_string);
        self.usage = parse_usage(s.value(T_USAGE));
        self.upstream_error = match terminal {
            Terminal::Failed => s
                .value(T_ERROR)
                .and_then(|raw| error_info(raw, "server_error"))
                .or_else(|| Some(failed_without_error())),
            Terminal::Error => Some(UpstreamErrorInfo {
                message: s
                    .value(T_MESSAGE)
                    .and_then(|m| serde_json::from_slice::<String>(m).ok())
                    .unwrap_or_default(),
                kind: "server_error".to_string(),
                code: s.value(T_CODE).and_then(|c| {
                    serde_json::from_slice::<serde_json::Value>(c)
                        .ok()
                        .filter(|v| !v.is_null())
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                }),
            }),
            Terminal::Completed | Terminal::Incomplete => None,
        };
    }

    /// End of the body: settles a trailing `\r` and says whether an event was left open.
    pub fn finish_stream(&mut self) -> StreamEnd {
        if self.pending_cr {
            self.pending_cr = false;
        }
        StreamEnd {
            mid_line: self.line_nonempty,
            mid_event: self.line_nonempty || self.event_has_fields,
        }
    }

    /// The record so far; `truncated` is the caller's (it knows where the body ended).
    pub fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        let estimate = estimate_completion_tokens(self.text_bytes, self.deltas);
        let status = self.status.clone().or_else(|| {
            self.terminal.map(|t| {
                match t {
                    Terminal::Completed => "completed",
                    Terminal::Incomplete => "incomplete",
                    Terminal::Failed | Terminal::Error => "failed",
                }
                .to_string()
            })
        });
        let mut record = UsageRecord {
            estimated_completion_tokens: estimate,
            ttft: self
                .first_token_at
                .map(|t| t.saturating_duration_since(self.start)),
            inter_token: self.gaps,
            content_deltas: self.deltas,
            finish_reasons: status
                .map(|reason| vec![ChoiceFinish { index: 0, reason }])
                .unwrap_or_default(),
            upstream_error: self.upstream_error.clone(),
            done_seen: self.terminal.is_some(),
            events: self.events,
            unparsable_events: self.unparsable_events,
            overflowed: self.overflowed,
            truncated: self.terminal.is_none(),
            ..UsageRecord::default()
        };
        apply_usage(&mut record, self.usage, estimate, prompt_tokens_hint);
        record
    }
}

fn failed_without_error() -> UpstreamErrorInfo {
    UpstreamErrorInfo {
        message: "response.failed".to_string(),
        kind: "server_error".to_string(),
        code: None,
    }
}

pub(super) fn apply_usage(
    record: &mut UsageRecord,
    usage: Option<ResponsesUsage>,
    estimate: u64,
    prompt_tokens_hint: u64,
) {
    if let Some(u) = usage {
        record.prompt_tokens = u.input_tokens;
        record.completion_tokens = u.output_tokens;
        record.total_tokens = u
            .total_tokens
            .unwrap_or(u.input_tokens.saturating_add(u.output_tokens));
        record.cached_prompt_tokens = u.input_tokens_details.and_then(|d| d.cached_tokens);
        record.reasoning_tokens = u.output_tokens_details.and_then(|d| d.reasoning_tokens);
        record.source = UsageSource::UpstreamUsage;
    } else if estimate > 0 {
        record.prompt_tokens = prompt_tokens_hint;
        record.completion_tokens = estimate;
        record.total_tokens = prompt_tokens_hint.saturating_add(estimate);
        record.source = UsageSource::Estimated;
    } else {
        record.prompt_tokens = prompt_tokens_hint;
        record.total_tokens = prompt_tokens_hint;
    }
}
