//! [`ResponseMeter`]: the one entry point the proxy calls for a response body.

use super::anthropic::{self, MessagesMeter};
use super::json::JsonUsageScanner;
use super::responses_body::{ResponsesJson, ResponsesStream};
use super::sse::{SseEvent, SseParser, DEFAULT_MAX_EVENT_BYTES};
use super::stream::{EventVerdict, StreamMeter, StreamProtocol};
use super::strip::{BodyAction, EventRewriter};
use super::usage::{UpstreamErrorInfo, UsageRecord, UsageSource};
use crate::upstream_error::normalize_error;
use bytes::Bytes;
use std::time::Instant;

/// Message of the error event appended to a truncated stream.
pub const TRUNCATION_MESSAGE: &str = "upstream stream ended before completion (truncated)";

/// What kind of body is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream` response.
    Sse(StreamProtocol),
    /// Non-streaming JSON response (chat, completions, embeddings, error bodies).
    Json,
    /// An OpenAI Responses API stream (`event:` + `data:` events, usage in
    /// `response.completed`), metered without holding any event.
    ResponsesSse,
    /// A non-streaming Responses API body.
    ResponsesJson,
}

#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub kind: BodyKind,
    /// Remove usage-only chunks (`choices:[]` + `usage`): set when the proxy injected
    /// `stream_options.include_usage` and the client had not asked for it. With continuous usage
    /// stats (enabled only by cluster config) the per-chunk `usage` fields are the upstream's and
    /// stay; only the final usage-only chunk goes.
    pub strip_usage_chunks: bool,
    /// Rewrite mid-stream error events to the OpenAI shape (the only change to an event's bytes).
    pub normalize_error_events: bool,
    /// On a truncated stream, [`ResponseMeter::on_end`] appends an error event so SDKs raise.
    pub append_truncation_error: bool,
    /// Bound on one event's bytes held or parsed (SSE), and on the captured `usage` (JSON).
    pub max_event_bytes: usize,
    /// Prompt tokens to record when the upstream sends no usage (e.g. the proxy's own count).
    pub prompt_tokens_hint: u64,
    /// Upstream HTTP status, to map a JSON `error` body (0 if unknown).
    pub status: u16,
    /// Whose `usage` object a JSON body carries.
    pub usage_shape: UsageShape,
}

/// The `usage` object of a non-streaming body: OpenAI's (`prompt_tokens`, …) or Anthropic's
/// (`input_tokens`, `output_tokens`, cache tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageShape {
    OpenAi,
    Anthropic,
}

impl MeterConfig {
    pub fn sse(protocol: StreamProtocol, strip_usage_chunks: bool) -> Self {
        Self {
            kind: BodyKind::Sse(protocol),
            strip_usage_chunks,
            normalize_error_events: true,
            append_truncation_error: true,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            prompt_tokens_hint: 0,
            status: 200,
            usage_shape: UsageShape::OpenAi,
        }
    }

    /// An Anthropic Messages stream: events pass unchanged (no usage chunk to strip, errors
    /// already in the client's shape); a cut stream gets an Anthropic `error` event.
    pub fn messages_sse() -> Self {
        Self {
            normalize_error_events: false,
            ..Self::sse(StreamProtocol::Anthropic, false)
        }
    }

    /// A non-streaming Messages body (or its error).
    pub fn messages_json(status: u16) -> Self {
        Self {
            usage_shape: UsageShape::Anthropic,
            ..Self::json(status)
        }
    }

    /// A Responses API stream: events pass unchanged; a cut stream gets an `error` event.
    pub fn responses_sse() -> Self {
        Self {
            kind: BodyKind::ResponsesSse,
            normalize_error_events: false,
            ..Self::sse(StreamProtocol::OpenAi, false)
        }
    }

    /// A non-streaming Responses API body (or its error).
    pub fn responses_json(status: u16) -> Self {
        Self {
            kind: BodyKind::ResponsesJson,
            ..Self::json(status)
        }
    }

    pub fn json(status: u16) -> Self {
        Self {
            kind: BodyKind::Json,
            status,
            max_event_bytes: super::json::DEFAULT_MAX_CAPTURE_BYTES,
            ..Self::sse(StreamProtocol::OpenAi, false)
        }
    }
}

#[derive(Debug)]
enum Body {
    Sse(Box<SseBody>),
    Json(JsonUsageScanner),
    ResponsesSse(Box<ResponsesStream>),
    ResponsesJson(Box<ResponsesJson>),
}

/// The per-protocol event meter of a stream.
#[derive(Debug)]
enum EventMeter {
    OpenAi(StreamMeter),
    Anthropic(MessagesMeter),
}

impl EventMeter {
    fn observe(&mut self, data: &[u8], now: Instant) -> EventVerdict {
        match self {
            EventMeter::OpenAi(m) => m.observe(data, now),
            EventMeter::Anthropic(m) => {
                // Anthropic events are already in the client's shape: never rewritten.
                m.observe(data, now);
                EventVerdict::Keep
            }
        }
    }

    /// The protocol's clean end was seen (`[DONE]`, `message_stop`).
    fn done_seen(&self) -> bool {
        match self {
            EventMeter::OpenAi(m) => m.done_seen(),
            EventMeter::Anthropic(m) => m.stop_seen(),
        }
    }

    fn error_seen(&self) -> bool {
        match self {
            EventMeter::OpenAi(m) => m.error_seen(),
            EventMeter::Anthropic(m) => m.error_seen(),
        }
    }

    fn record(&self, prompt_tokens_hint: u64) -> UsageRecord {
        match self {
            EventMeter::OpenAi(m) => m.record(prompt_tokens_hint),
            EventMeter::Anthropic(m) => m.record(prompt_tokens_hint),
        }
    }
}

#[derive(Debug)]
struct SseBody {
    protocol: StreamProtocol,
    parser: SseParser,
    meter: EventMeter,
    rewriter: EventRewriter,
    /// Holding an event would exceed the bound: stop rewriting, pass everything through.
    abandoned: bool,
    stripped: u32,
    truncated: bool,
    ended: bool,
    error_event: Option<Bytes>,
}

/// Meters one response body and rewrites its events where configured.
///
/// Call [`on_body`](Self::on_body) for every piece, [`on_end`](Self::on_end) at end of stream
/// (append what it returns), and [`finish`](Self::finish) for the record (in `logging`, also when
/// the stream was aborted and `on_end` never ran).
#[derive(Debug)]
pub struct ResponseMeter {
    config: MeterConfig,
    body: Body,
    body_bytes: u64,
}

impl ResponseMeter {
    /// `start`: when the request was sent upstream (TTFT origin).
    pub fn new(config: MeterConfig, start: Instant) -> Self {
        let body = match config.kind {
            BodyKind::Sse(protocol) => Body::Sse(Box::new(SseBody {
                protocol,
                parser: SseParser::new(config.max_event_bytes),
                meter: match protocol {
                    StreamProtocol::Anthropic => EventMeter::Anthropic(MessagesMeter::new(start)),
                    StreamProtocol::OpenAi | StreamProtocol::TritonGenerate => {
                        EventMeter::OpenAi(StreamMeter::new(start))
                    }
                },
                rewriter: EventRewriter::default(),
                abandoned: false,
                stripped: 0,
                truncated: false,
                ended: false,
                error_event: None,
            })),
            BodyKind::Json => Body::Json(JsonUsageScanner::new(config.max_event_bytes)),
            BodyKind::ResponsesSse => Body::ResponsesSse(Box::new(ResponsesStream::new(start))),
            BodyKind::ResponsesJson => Body::ResponsesJson(Box::default()),
        };
        Self {
            config,
            body,
            body_bytes: 0,
        }
    }

    /// One piece of the upstream body. `Passthrough` unless an event is held back, removed or
    /// rewritten; with stripping off and no error event, always `Passthrough`.
    pub fn on_body(&mut self, piece: &[u8], now: Instant) -> BodyAction {
        self.body_bytes += piece.len() as u64;
        match &mut self.body {
            Body::Json(scanner) => {
                scanner.feed(piece);
                BodyAction::Passthrough
            }
            Body::Sse(sse) if sse.ended => BodyAction::Passthrough,
            Body::Sse(sse) => sse.on_piece(&self.config, piece, now),
            Body::ResponsesSse(r) => {
                r.on_piece(piece, now);
                BodyAction::Passthrough
            }
            Body::ResponsesJson(r) => {
                r.feed(piece);
                BodyAction::Passthrough
            }
        }
    }

    /// End of the upstream body: returns the bytes to send before closing (held bytes, and for a
    /// truncated stream a terminator for a cut event plus an error event). Idempotent.
    pub fn on_end(&mut self, now: Instant) -> Option<Bytes> {
        match &mut self.body {
            Body::Sse(sse) if !sse.ended => sse.end(&self.config, now),
            Body::ResponsesSse(r) => r.end(self.config.append_truncation_error),
            _ => None,
        }
    }

    /// The error event appended (or to append) to a truncated stream, once it ended.
    pub fn end_of_stream_error_event(&self) -> Option<Bytes> {
        match &self.body {
            Body::Sse(sse) => sse.error_event.clone(),
            Body::ResponsesSse(r) => r.error_event(),
            Body::Json(_) | Body::ResponsesJson(_) => None,
        }
    }

    /// A stream's first token has arrived (never for a JSON body: it comes whole at the end).
    pub fn first_token_seen(&self) -> bool {
        match &self.body {
            Body::Sse(sse) => match &sse.meter {
                EventMeter::OpenAi(m) => m.first_token_seen(),
                EventMeter::Anthropic(m) => m.first_token_seen(),
            },
            Body::ResponsesSse(r) => r.meter().first_token_seen(),
            Body::Json(_) | Body::ResponsesJson(_) => false,
        }
    }

    /// Bytes held for incomplete events or values (bounded by `max_event_bytes` per buffer).
    pub fn carried_bytes(&self) -> usize {
        match &self.body {
            Body::Sse(sse) => sse.parser.carried_bytes().max(sse.rewriter.held_bytes()),
            Body::Json(scanner) => scanner.carried_bytes(),
            Body::ResponsesSse(r) => r.meter().carried_bytes(),
            Body::ResponsesJson(r) => r.carried_bytes(),
        }
    }

    /// A Responses API body's response id, once it passed (`response.created`'s, or the
    /// non-streaming body's top-level `id`).
    pub fn response_id(&self) -> Option<&str> {
        match &self.body {
            Body::ResponsesSse(r) => r.meter().response_id(),
            Body::ResponsesJson(r) => r.response_id(),
            Body::Sse(_) | Body::Json(_) => None,
        }
    }

    /// The usage record. Ends the stream first if `on_end` was not called (aborted stream).
    pub fn finish(&mut self, now: Instant) -> UsageRecord {
        let _ = self.on_end(now);
        self.record()
    }

    /// The record as of now (no side effects).
    pub fn record(&self) -> UsageRecord {
        let mut record = match &self.body {
            Body::Sse(sse) => {
                let mut r = sse.meter.record(self.config.prompt_tokens_hint);
                r.truncated = sse.truncated;
                r.overflowed = sse.parser.overflowed() || sse.abandoned;
                r.usage_chunks_stripped = sse.stripped;
                r
            }
            Body::Json(scanner) => self.json_record(scanner),
            Body::ResponsesSse(r) => r.record(self.config.prompt_tokens_hint),
            Body::ResponsesJson(r) => r.record(self.config.prompt_tokens_hint),
        };
        record.body_bytes = self.body_bytes;
        record
    }

    fn json_record(&self, scanner: &JsonUsageScanner) -> UsageRecord {
        let hint = self.config.prompt_tokens_hint;
        let mut r = UsageRecord {
            prompt_tokens: hint,
            total_tokens: hint,
            overflowed: scanner.overflowed(),
            truncated: scanner.body_bytes() > 0 && !scanner.complete(),
            ..UsageRecord::default()
        };
        let usage = match self.config.usage_shape {
            UsageShape::OpenAi => scanner.usage(),
            UsageShape::Anthropic => scanner.usage_raw().and_then(anthropic::parse_usage),
        };
        if let Some(u) = usage {
            r.prompt_tokens = u.prompt_tokens.unwrap_or(0);
            r.completion_tokens = u.completion_tokens.unwrap_or(0);
            r.total_tokens = u.total();
            r.cached_prompt_tokens = u.cached_tokens();
            r.reasoning_tokens = u.reasoning_tokens();
            r.source = UsageSource::UpstreamUsage;
        }
        if let Some(value) = scanner.error_value() {
            let mut body = Vec::with_capacity(value.len() + 10);
            body.extend_from_slice(b"{\"error\":");
            body.extend_from_slice(value);
            body.push(b'}');
            let e = normalize_error(self.config.status, &body).error;
            r.upstream_error = Some(UpstreamErrorInfo {
                message: e.message,
                kind: e.kind,
                code: e.code,
            });
        }
        r
    }
}

impl SseBody {
    fn rewriting(&self, config: &MeterConfig) -> bool {
        !self.abandoned && (config.strip_usage_chunks || config.normalize_error_events)
    }

    fn on_piece(&mut self, config: &MeterConfig, piece: &[u8], now: Instant) -> BodyAction {
        let rewriting = self.rewriting(config);
        let mut handler = EventHandler {
            meter: &mut self.meter,
            rewriter: &mut self.rewriter,
            stripped: &mut self.stripped,
            strip: rewriting && config.strip_usage_chunks,
            normalize: rewriting && config.normalize_error_events,
            now,
        };
        self.parser.feed(piece, |event| handler.on_event(event));
        if !rewriting {
            return BodyAction::Passthrough;
        }
        let stream_end = self.parser.offset();
        let hold = config.strip_usage_chunks || may_be_error_event(&self.parser);
        let mut hold_from = if hold {
            self.parser.block_start()
        } else {
            stream_end
        };
        if self.parser.skipping() || stream_end - hold_from > config.max_event_bytes as u64 {
            self.abandoned = true;
            hold_from = stream_end;
        }
        self.rewriter.apply(piece, hold_from)
    }

    fn end(&mut self, config: &MeterConfig, now: Instant) -> Option<Bytes> {
        self.ended = true;
        let rewriting = self.rewriting(config);
        let mut handler = EventHandler {
            meter: &mut self.meter,
            rewriter: &mut self.rewriter,
            stripped: &mut self.stripped,
            strip: rewriting && config.strip_usage_chunks,
            normalize: rewriting && config.normalize_error_events,
            now,
        };
        let state = self.parser.finish(|event| handler.on_event(event));
        self.truncated = match self.protocol {
            StreamProtocol::OpenAi => !handler.meter.done_seen(),
            StreamProtocol::TritonGenerate => state.mid_event,
            // An `error` event is the protocol's other end (vLLM sends no `message_stop` after it).
            StreamProtocol::Anthropic => !handler.meter.done_seen() && !handler.meter.error_seen(),
        };
        let append = self.truncated && config.append_truncation_error;
        // A cut event is terminated so the client sees it end before the error event.
        let terminator: &[u8] = match (append && state.mid_event, state.mid_line) {
            (false, _) => b"",
            (true, true) => b"\n\n",
            (true, false) => b"\n",
        };
        let error_seen = handler.meter.error_seen();
        self.parser
            .feed(terminator, |event| handler.on_event(event));
        let mut tail = if rewriting {
            match self.rewriter.apply(terminator, self.parser.offset()) {
                BodyAction::Passthrough => terminator.to_vec(),
                BodyAction::Replace(bytes) => bytes.to_vec(),
            }
        } else {
            terminator.to_vec()
        };
        if append && !error_seen {
            let event = truncation_error_event(self.protocol);
            tail.extend_from_slice(&event);
            self.error_event = Some(event);
        }
        (!tail.is_empty()).then(|| Bytes::from(tail))
    }
}

/// Applies the meter's verdicts to the rewriter as events complete.
struct EventHandler<'a> {
    meter: &'a mut EventMeter,
    rewriter: &'a mut EventRewriter,
    stripped: &'a mut u32,
    strip: bool,
    normalize: bool,
    now: Instant,
}

impl EventHandler<'_> {
    fn on_event(&mut self, event: &SseEvent<'_>) {
        match self.meter.observe(event.data, self.now) {
            EventVerdict::UsageOnly
                if self.strip && self.rewriter.edit(event.start, event.end, None) =>
            {
                *self.stripped += 1;
            }
            EventVerdict::Error(Some(replacement)) if self.normalize => {
                let mut framed = Vec::with_capacity(replacement.len() + 8);
                framed.extend_from_slice(b"data: ");
                framed.extend_from_slice(&replacement);
                framed.extend_from_slice(b"\n\n");
                self.rewriter
                    .edit(event.start, event.end, Some(Bytes::from(framed)));
            }
            _ => {}
        }
    }
}

/// Could the incomplete event still turn out to be `{"error"…}`? Every upstream's error event
/// starts so; other events are told apart after a few bytes and need not be held back.
fn may_be_error_event(parser: &SseParser) -> bool {
    let Some(data) = parser.partial_first_data() else {
        // No data line yet: only a few bytes (a field name, a comment) can be pending.
        return parser.offset() > parser.block_start();
    };
    let data = data.trim_ascii_start();
    let Some(rest) = data.strip_prefix(b"{") else {
        return data.is_empty();
    };
    let rest = rest.trim_ascii_start();
    let pattern = b"\"error\"";
    let n = rest.len().min(pattern.len());
    rest[..n] == pattern[..n]
}

/// The event that makes SDK clients raise on a truncated stream (a truthy `error`).
pub fn truncation_error_event(protocol: StreamProtocol) -> Bytes {
    match protocol {
        StreamProtocol::OpenAi => Bytes::from(format!(
            "data: {{\"error\":{{\"message\":\"{TRUNCATION_MESSAGE}\",\"type\":\"server_error\",\"param\":null,\"code\":\"stream_truncated\"}}}}\n\n"
        )),
        // Triton's own error event shape.
        StreamProtocol::TritonGenerate => {
            Bytes::from(format!("data: {{\"error\":\"{TRUNCATION_MESSAGE}\"}}\n\n"))
        }
        // What the Anthropic SDKs raise on: an `error` event in Anthropic's error shape.
        StreamProtocol::Anthropic => {
            let body = crate::upstream_error::anthropic::anthropic_error_body("api_error", TRUNCATION_MESSAGE);
            let mut event = b"event: error\ndata: ".to_vec();
            event.extend_from_slice(&body);
            event.extend_from_slice(b"\n\n");
            Bytes::from(event)
        }
    }
}
