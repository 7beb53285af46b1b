//! Responses API metering: whole streams, split at every byte, cut and failed streams, and a
//! 10 MiB `response.completed` event metered with bounded memory.

use super::response::{MeterConfig, ResponseMeter};
use super::strip::BodyAction;
use super::usage::{UsageRecord, UsageSource};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn event(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A vLLM-shaped stream whose output text is `text` (repeated in `response.completed`).
fn stream(text: &str, end: &str) -> String {
    let resp = |status: &str, usage: &str, output: &str| {
        format!(
            r#"{{"id":"resp_abc","created_at":1,"model":"m","object":"response","output":[{output}],"status":"{status}","usage":{usage}}}"#
        )
    };
    let text_json = serde_json::Value::String(text.to_string()).to_string();
    let item = format!(
        r#"{{"id":"msg_1","content":[{{"annotations":[],"text":{text_json},"type":"output_text"}}],"role":"assistant","status":"completed","type":"message"}}"#
    );
    let mut s = String::new();
    s += &event(
        "response.created",
        &format!(
            r#"{{"response":{},"sequence_number":0,"type":"response.created"}}"#,
            resp("in_progress", "null", "")
        ),
    );
    s += &event(
        "response.in_progress",
        &format!(
            r#"{{"response":{},"sequence_number":1,"type":"response.in_progress"}}"#,
            resp("in_progress", "null", "")
        ),
    );
    for (i, word) in text.split_inclusive(' ').enumerate() {
        let delta = serde_json::Value::String(word.to_string()).to_string();
        s += &event(
            "response.output_text.delta",
            &format!(
                r#"{{"content_index":0,"delta":{delta},"item_id":"msg_1","output_index":0,"sequence_number":{},"type":"response.output_text.delta","logprobs":[]}}"#,
                i + 2
            ),
        );
    }
    match end {
        "completed" => {
            s += &event(
                "response.completed",
                &format!(
                    r#"{{"response":{},"sequence_number":99,"type":"response.completed"}}"#,
                    resp(
                        "completed",
                        r#"{"input_tokens":12,"input_tokens_details":{"cached_tokens":4},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":19}"#,
                        &item
                    )
                ),
            );
        }
        "failed" => {
            s += &event(
                "response.failed",
                r#"{"response":{"id":"resp_abc","status":"failed","error":{"code":"server_error","message":"engine died"},"usage":null},"sequence_number":99,"type":"response.failed"}"#,
            );
        }
        "error" => {
            s += &event(
                "error",
                r#"{"type":"error","code":"500","message":"boom","param":null,"sequence_number":9}"#,
            );
        }
        _ => {}
    }
    s
}

fn meter_pieces(pieces: &[&[u8]]) -> (UsageRecord, Vec<u8>, Option<String>) {
    let t0 = Instant::now();
    let mut m = ResponseMeter::new(MeterConfig::responses_sse(), t0);
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        assert_eq!(m.on_body(p, now), BodyAction::Passthrough);
        out.extend_from_slice(p);
    }
    if let Some(tail) = m.on_end(t0) {
        out.extend_from_slice(&tail);
    }
    let id = m.response_id().map(str::to_string);
    let mut r = m.finish(t0);
    // Times depend on where the pieces were cut.
    r.ttft = None;
    r.inter_token = Default::default();
    (r, out, id)
}

#[test]
fn completed_stream_is_metered_from_response_completed() {
    let body = stream(
        "the usage: \"usage\":{\"input_tokens\":999} is text",
        "completed",
    );
    let (r, out, id) = meter_pieces(&[body.as_bytes()]);
    assert_eq!(out, body.as_bytes(), "passes unchanged");
    assert_eq!(id.as_deref(), Some("resp_abc"));
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (12, 7, 19)
    );
    assert_eq!(r.cached_prompt_tokens, Some(4));
    assert_eq!(r.reasoning_tokens, Some(0));
    assert_eq!(r.source, UsageSource::UpstreamUsage);
    assert!(!r.truncated && r.done_seen && r.upstream_error.is_none());
    assert_eq!(r.finish_reasons[0].reason, "completed");
    assert_eq!(r.content_deltas, 5);
}

#[test]
fn split_at_every_byte_gives_the_same_record() {
    for end in ["completed", "failed", "error", "cut"] {
        let body = stream("hello there, general kenobi", end);
        let bytes = body.as_bytes();
        let (whole, whole_out, _) = meter_pieces(&[bytes]);
        for i in 0..=bytes.len() {
            let (r, out, _) = meter_pieces(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(r, whole, "{end}: split at {i}");
            assert_eq!(out, whole_out, "{end}: split at {i}");
        }
    }
}

#[test]
fn cut_stream_is_truncated_and_gets_an_error_event() {
    let body = stream("some words here", "cut");
    // Cut in the middle of the last event's data line.
    let cut = &body.as_bytes()[..body.len() - 20];
    let (r, out, _) = meter_pieces(&[cut]);
    assert!(r.truncated && !r.done_seen);
    assert_eq!(r.source, UsageSource::Estimated);
    let tail = std::str::from_utf8(&out[cut.len()..]).unwrap();
    assert!(tail.starts_with("\n\nevent: error\ndata: {"), "{tail}");
    let data = tail.trim().rsplit("data: ").next().unwrap();
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "stream_truncated");
    assert_eq!(v["error"]["code"], "stream_truncated");
}

#[test]
fn failed_and_error_streams_are_recorded_as_failed() {
    let (r, out, _) = meter_pieces(&[stream("a b", "failed").as_bytes()]);
    assert!(!r.truncated);
    assert_eq!(out, stream("a b", "failed").as_bytes(), "no event appended");
    let e = r.upstream_error.unwrap();
    assert_eq!(
        (e.message.as_str(), e.code.as_deref()),
        ("engine died", Some("server_error"))
    );
    assert_eq!(r.finish_reasons[0].reason, "failed");
    let (r, _, _) = meter_pieces(&[stream("a b", "error").as_bytes()]);
    let e = r.upstream_error.unwrap();
    assert_eq!(
        (e.message.as_str(), e.code.as_deref()),
        ("boom", Some("500"))
    );
}

#[test]
fn ten_mib_completed_event_is_metered_with_bounded_memory() {
    let text = "x \"usage\":{} ".repeat(10 * 1024 * 1024 / 13);
    let body = stream(&text, "completed");
    assert!(body.len() > 20 * 1024 * 1024);
    let t0 = Instant::now();
    let mut m = ResponseMeter::new(MeterConfig::responses_sse(), t0);
    let mut most = 0;
    for piece in body.as_bytes().chunks(16 * 1024) {
        m.on_body(piece, t0);
        most = most.max(m.carried_bytes());
    }
    assert!(m.on_end(t0).is_none());
    let r = m.finish(t0);
    assert!(most < 16 * 1024, "held {most} bytes");
    assert_eq!((r.prompt_tokens, r.completion_tokens), (12, 7));
    assert!(!r.truncated && !r.overflowed);
}

#[test]
fn non_streaming_body_and_its_error() {
    let body = br#"{"id":"resp_1","object":"response","output":[{"content":[{"text":"\"usage\":{\"input_tokens\":5}","type":"output_text"}]}],"status":"completed","usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}"#;
    for i in 0..=body.len() {
        let mut m = ResponseMeter::new(MeterConfig::responses_json(200), Instant::now());
        m.on_body(&body[..i], Instant::now());
        m.on_body(&body[i..], Instant::now());
        assert_eq!(m.response_id(), Some("resp_1"));
        let r = m.finish(Instant::now());
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (3, 2, 5)
        );
        assert!(!r.truncated);
    }
    let mut m = ResponseMeter::new(MeterConfig::responses_json(404), Instant::now());
    m.on_body(
        br#"{"error":{"message":"Response with id 'resp_x' not found.","type":"invalid_request_error","param":"response_id","code":404}}"#,
        Instant::now(),
    );
    let r = m.finish(Instant::now());
    assert_eq!(r.upstream_error.unwrap().code.as_deref(), Some("404"));
    assert_eq!(r.source, UsageSource::None);
}

proptest! {
    #[test]
    fn any_three_way_split_matches(text in "[a-z \"\\\\{}:]{0,40}", a in 0usize..4000, b in 0usize..4000, end in 0usize..4) {
        let end = ["completed", "failed", "error", "cut"][end];
        let body = stream(&text, end);
        let bytes = body.as_bytes();
        let (x, y) = (a.min(bytes.len()), b.min(bytes.len()));
        let (lo, hi) = (x.min(y), x.max(y));
        let (whole, whole_out, _) = meter_pieces(&[bytes]);
        let (r, out, _) = meter_pieces(&[&bytes[..lo], &bytes[lo..hi], &bytes[hi..]]);
        prop_assert_eq!(r, whole);
        prop_assert_eq!(out, whole_out);
    }

    #[test]
    fn crlf_framing_matches_lf(text in "[a-z ]{0,30}") {
        let body = stream(&text, "completed");
        let crlf = body.replace('\n', "\r\n");
        let (a, _, _) = meter_pieces(&[body.as_bytes()]);
        let (mut b, _, _) = meter_pieces(&[crlf.as_bytes()]);
        b.body_bytes = a.body_bytes;
        prop_assert_eq!(a, b);
    }
}
