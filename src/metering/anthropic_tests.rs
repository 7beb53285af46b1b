//! Anthropic Messages metering through [`ResponseMeter`]: vLLM-shaped streams (text, tool use,
//! thinking, cache tokens), the cut-stream and error-event cases, every split giving the same
//! record and output, and the non-streaming body's `usage`.

use std::time::Instant;

use proptest::prelude::*;
use serde_json::Value;

use super::{BodyAction, MeterConfig, ResponseMeter, UsageRecord, UsageSource, TRUNCATION_MESSAGE};

fn event(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A vLLM-shaped Messages stream (exclude_unset dumps, no ping).
fn text_stream(stop: bool) -> Vec<u8> {
    let mut s = String::new();
    s += &event(
        "message_start",
        r#"{"type":"message_start","message":{"id":"chatcmpl-1","content":[],"model":"meta-llama/Llama-3.1-8B-Instruct","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":21,"output_tokens":0}}}"#,
    );
    s += &event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    for word in ["Hé", " llo", " wörld", " \"usage\":{\"output_tokens\":999}"] {
        let delta = serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":word}});
        s += &event("content_block_delta", &delta.to_string());
    }
    s += &event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    if stop {
        s += &event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":21,"output_tokens":4}}"#,
        );
        s += &event("message_stop", r#"{"type":"message_stop"}"#);
    }
    s.into_bytes()
}

fn tool_stream() -> Vec<u8> {
    let mut s = String::new();
    s += &event(
        "message_start",
        r#"{"type":"message_start","message":{"id":"m","content":[],"model":"x","usage":{"input_tokens":7,"output_tokens":0,"cache_read_input_tokens":5,"cache_creation_input_tokens":2}}}"#,
    );
    s += &event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
    );
    s += &event(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
    );
    s += &event(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"abc"}}"#,
    );
    s += &event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    s += &event(
        "content_block_start",
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_1","name":"get_weather","input":{}}}"#,
    );
    for part in [r#"{"city": "#, r#""Par"#, r#"is"}"#] {
        let delta = serde_json::json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":part}});
        s += &event("content_block_delta", &delta.to_string());
    }
    s += &event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":1}"#,
    );
    s += &event(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":7,"output_tokens":12}}"#,
    );
    s += &event("message_stop", r#"{"type":"message_stop"}"#);
    s.into_bytes()
}

/// vLLM's converter fails: an `error` event and no `message_stop`.
fn error_stream() -> Vec<u8> {
    let mut s = String::from_utf8(text_stream(false)).unwrap();
    s += &event(
        "error",
        r#"{"type":"error","error":{"type":"internal_error","message":"Invalid data format received"}}"#,
    );
    s.into_bytes()
}

struct Run {
    output: Vec<u8>,
    record: UsageRecord,
}

fn run(body: &[u8], cuts: &[usize]) -> Run {
    let t0 = Instant::now();
    let mut meter = ResponseMeter::new(MeterConfig::messages_sse(), t0);
    let mut output = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let cut = cut.clamp(from, body.len());
        let piece = &body[from..cut];
        from = cut;
        match meter.on_body(piece, t0) {
            BodyAction::Passthrough => output.extend_from_slice(piece),
            BodyAction::Replace(_) => panic!("Messages events are never rewritten"),
        }
    }
    if let Some(tail) = meter.on_end(t0) {
        output.extend_from_slice(&tail);
    }
    Run {
        output,
        record: meter.finish(t0),
    }
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut cut_mid_event = text_stream(false);
    cut_mid_event.extend_from_slice(b"event: content_block_delta\ndata: {\"type\":\"content_bl");
    vec![
        ("text", text_stream(true)),
        ("tool", tool_stream()),
        ("cut", text_stream(false)),
        ("cut-mid-event", cut_mid_event),
        ("error", error_stream()),
    ]
}

#[test]
fn text_stream_meters_usage_from_message_start_and_delta() {
    let r = run(&text_stream(true), &[]);
    assert_eq!(
        (r.record.prompt_tokens, r.record.completion_tokens),
        (21, 4)
    );
    assert_eq!(r.record.total_tokens, 25);
    assert_eq!(r.record.source, UsageSource::UpstreamUsage);
    assert_eq!(r.record.content_deltas, 4);
    assert_eq!(r.record.finish_reasons[0].reason, "end_turn");
    assert!(r.record.done_seen && !r.record.truncated && r.record.upstream_error.is_none());
    assert_eq!(r.record.unparsable_events, 0);
    assert_eq!(r.output, text_stream(true), "passed through untouched");
}

#[test]
fn tool_and_thinking_deltas_and_cache_tokens() {
    let r = run(&tool_stream(), &[]).record;
    // input 7 + cache reads 5 + cache writes 2.
    assert_eq!((r.prompt_tokens, r.completion_tokens), (14, 12));
    assert_eq!(r.cached_prompt_tokens, Some(5));
    assert_eq!((r.content_deltas, r.tool_call_deltas), (1, 3));
    assert_eq!(r.finish_reasons[0].reason, "tool_use");
    assert!(!r.truncated);
}

#[test]
fn cut_stream_is_truncated_and_gets_an_anthropic_error_event() {
    for (name, body) in cases().into_iter().filter(|(n, _)| n.starts_with("cut")) {
        let r = run(&body, &[]);
        assert!(r.record.truncated, "{name}");
        assert_eq!(
            r.record.prompt_tokens, 21,
            "{name}: input from message_start"
        );
        assert_eq!(r.record.source, UsageSource::Estimated, "{name}");
        assert!(r.record.completion_tokens > 0, "{name}");
        let tail = &r.output[body.len()..];
        let text = std::str::from_utf8(tail).unwrap();
        let error_event = text
            .rsplit_once("event: error\ndata: ")
            .expect("error event")
            .1;
        assert!(text.ends_with("\n\n"), "{name}: {text:?}");
        let v: Value = serde_json::from_str(error_event.trim_end()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], TRUNCATION_MESSAGE);
    }
}

#[test]
fn error_event_is_recorded_and_passed_unchanged() {
    let body = error_stream();
    let r = run(&body, &[]);
    assert_eq!(
        r.output, body,
        "no truncation event after the replica's own error"
    );
    let e = r.record.upstream_error.expect("error recorded");
    assert_eq!(e.kind, "internal_error");
    assert_eq!(e.code.as_deref(), Some("internal_error"));
    assert_eq!(e.message, "Invalid data format received");
    assert!(!r.record.truncated && !r.record.done_seen);
}

/// Acceptance: a single split at every byte gives identical records and output.
#[test]
fn every_single_split_is_identical() {
    for (name, body) in cases() {
        let whole = run(&body, &[]);
        for i in 0..=body.len() {
            let split = run(&body, &[i]);
            assert_eq!(split.record, whole.record, "{name} split {i}");
            assert_eq!(split.output, whole.output, "{name} split {i}");
        }
    }
}

fn cuts_strategy() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (
        0..cases().len(),
        prop::collection::vec(
            prop_oneof![3 => Just(1usize), 2 => 1usize..8, 1 => 8usize..200],
            1..300,
        ),
    )
        .prop_map(|(i, lens)| {
            let cuts = lens
                .iter()
                .scan(0usize, |at, len| {
                    *at += len;
                    Some(*at)
                })
                .collect();
            (i, cuts)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random multi-splits (many 1-byte pieces) give identical results.
    #[test]
    fn random_multi_splits_are_identical((index, cuts) in cuts_strategy()) {
        let (_, body) = &cases()[index];
        let whole = run(body, &[]);
        let split = run(body, &cuts);
        prop_assert_eq!(split.record, whole.record);
        prop_assert_eq!(split.output, whole.output);
    }
}

#[test]
fn non_streaming_body_usage_split_at_every_byte() {
    let body = br#"{"id":"chatcmpl-1","type":"message","role":"assistant","content":[{"type":"text","text":"\"usage\": {\"input_tokens\": 1}"}],"model":"m","stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":3,"cache_read_input_tokens":4}}"#;
    let t0 = Instant::now();
    for i in 0..=body.len() {
        let mut meter = ResponseMeter::new(MeterConfig::messages_json(200), t0);
        let _ = meter.on_body(&body[..i], t0);
        let _ = meter.on_body(&body[i..], t0);
        let r = meter.finish(t0);
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (13, 3, 16),
            "split {i}"
        );
        assert_eq!(r.cached_prompt_tokens, Some(4));
        assert_eq!(r.source, UsageSource::UpstreamUsage);
    }
}
