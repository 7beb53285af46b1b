//! Streams produced by the real simulator (vLLM and trtllm flavours, several choices, usage on
//! every chunk, multi-byte text), metered split at every byte position: identical results,
//! equal to the stream's own final usage, and stripping removes exactly the usage chunk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;
use tokengate::metering::{BodyAction, MeterConfig, ResponseMeter, StreamProtocol, UsageRecord};

fn meter_split(body: &[u8], cut: usize, strip: bool) -> (UsageRecord, Vec<u8>) {
    let now = Instant::now();
    let mut meter = ResponseMeter::new(MeterConfig::sse(StreamProtocol::OpenAi, strip), now);
    let mut out = Vec::new();
    for piece in [&body[..cut], &body[cut..]] {
        match meter.on_body(piece, now) {
            BodyAction::Passthrough => out.extend_from_slice(piece),
            BodyAction::Replace(b) => out.extend_from_slice(&b),
        }
    }
    if let Some(tail) = meter.on_end(now) {
        out.extend_from_slice(&tail);
    }
    (meter.finish(now), out)
}

fn final_usage(text: &str) -> Value {
    sse_events(text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v["choices"].as_array().is_some_and(|c| c.is_empty()))
        .map(|v| v["usage"].clone())
        .next_back()
        .expect("a usage chunk")
}

fn without_usage_chunk(text: &str) -> String {
    text.split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect()
}

#[tokio::test]
async fn simulator_streams_meter_identically_at_every_split() {
    let vllm = Sim::start(&["--served-model-name", "s", "--seed", "7"]);
    let trt = Sim::start(&[
        "--flavour",
        "trtllm",
        "--served-model-name",
        "s",
        "--seed",
        "9",
    ]);
    let bodies = [
        (
            &vllm,
            "/v1/chat/completions",
            r#"{"model":"s","stream":true,"n":2,"max_tokens":12,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"café 日本 🙂"}]}"#,
        ),
        (
            &vllm,
            "/v1/chat/completions",
            r#"{"model":"s","stream":true,"max_tokens":9,"stream_options":{"include_usage":true,"continuous_usage_stats":true},"messages":[{"role":"user","content":"x y"}]}"#,
        ),
        (
            &vllm,
            "/v1/completions",
            r#"{"model":"s","stream":true,"max_tokens":10,"stream_options":{"include_usage":true},"prompt":"naïve"}"#,
        ),
        (
            &trt,
            "/v1/chat/completions",
            r#"{"model":"s","stream":true,"max_tokens":8,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ];
    for (sim, path, body) in bodies {
        let (status, text) = stream_text(&sim.url(path), body, &[]).await;
        assert_eq!(status, 200, "{text}");
        let usage = final_usage(&text);
        let raw = text.as_bytes();
        let (whole, _) = meter_split(raw, raw.len(), false);
        assert_eq!(
            whole.completion_tokens,
            usage["completion_tokens"].as_u64().unwrap(),
            "{path} {body}"
        );
        assert_eq!(
            whole.prompt_tokens,
            usage["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(whole.total_tokens, usage["total_tokens"].as_u64().unwrap());
        assert!(whole.done_seen && !whole.truncated);
        let stripped_expected = without_usage_chunk(&text);
        for cut in 0..=raw.len() {
            let (record, out) = meter_split(raw, cut, false);
            assert_eq!(record, whole, "cut at {cut}");
            assert_eq!(out, raw, "passthrough is byte-identical (cut at {cut})");
            let (stripped_record, stripped) = meter_split(raw, cut, true);
            assert_eq!(stripped_record.completion_tokens, whole.completion_tokens);
            assert_eq!(
                String::from_utf8(stripped).unwrap(),
                stripped_expected,
                "strip removes exactly the usage chunk (cut at {cut})"
            );
        }
    }
}
