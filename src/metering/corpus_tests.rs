//! Acceptance tests: every corpus stream and a set of generated ones, split at every byte and
//! in random pieces, must meter and strip identically, and agree with an independent oracle.

use super::synthetic::{chat_stream, large_chat_stream, meter_in_pieces, ChatStreamSpec};
use super::*;
use crate::upstream_error;
use proptest::prelude::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// PAYLOAD files lost their framing: keep the `data:` lines, each as its own event.
fn normalise_payload(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in raw.split(|b| *b == b'\n') {
        if line.starts_with(b"data:") {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\n\n");
        }
    }
    out
}

struct Case {
    name: String,
    body: Vec<u8>,
    protocol: StreamProtocol,
    /// Body with the usage-only event(s) removed; `None`: use the `\n\n` oracle.
    stripped: Option<Vec<u8>>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for name in [
        "openai-chat-stream-include-usage.sse",
        "openai-chat-stream-multibyte.sse",
        "openai-completion-stream-include-usage.sse",
        "vllm-0.6-chat-stream-toolcalls-continuous-usage.sse",
        "DERIVED-vllm-midstream-error-v0.10.1plus.sse",
        "DERIVED-vllm-midstream-error-pre-v0.10.1.sse",
    ] {
        cases.push(Case {
            name: name.into(),
            body: corpus(name),
            protocol: StreamProtocol::OpenAi,
            stripped: None,
        });
    }
    for (name, protocol) in [
        (
            "vllm-completions-stream-usage-chunks.txt",
            StreamProtocol::OpenAi,
        ),
        ("vllm-0.11-chat-stream.elided.txt", StreamProtocol::OpenAi),
        (
            "triton-trtllm-generate-stream-event.txt",
            StreamProtocol::TritonGenerate,
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            body: normalise_payload(&corpus(name)),
            protocol,
            stripped: None,
        });
    }
    for (name, spec) in synthetic_specs() {
        let s = chat_stream(&spec);
        let stripped = s.usage_event.map(|r| {
            let mut b = s.body[..r.start].to_vec();
            b.extend_from_slice(&s.body[r.end..]);
            b
        });
        cases.push(Case {
            name: name.into(),
            stripped: Some(stripped.unwrap_or_else(|| s.body.clone())),
            body: s.body,
            protocol: StreamProtocol::OpenAi,
        });
    }
    cases
}

fn synthetic_specs() -> Vec<(&'static str, ChatStreamSpec)> {
    let base = ChatStreamSpec::default;
    vec![
        (
            "synthetic-vllm-chat-tools",
            ChatStreamSpec {
                tool_calls: true,
                ..base()
            },
        ),
        (
            "synthetic-n2",
            ChatStreamSpec {
                choices: 2,
                deltas: 5,
                ..base()
            },
        ),
        (
            "synthetic-continuous",
            ChatStreamSpec {
                continuous_usage: true,
                deltas: 5,
                tool_calls: true,
                ..base()
            },
        ),
        (
            "synthetic-crlf",
            ChatStreamSpec {
                crlf: true,
                deltas: 5,
                ..base()
            },
        ),
        (
            "synthetic-decorated",
            ChatStreamSpec {
                decorations: true,
                deltas: 6,
                ..base()
            },
        ),
        (
            "synthetic-decorated-crlf-n2",
            ChatStreamSpec {
                decorations: true,
                crlf: true,
                choices: 2,
                deltas: 4,
                ..base()
            },
        ),
        (
            "synthetic-trtllm",
            ChatStreamSpec {
                trtllm_trailing_space: true,
                deltas: 5,
                ..base()
            },
        ),
        (
            "synthetic-no-usage",
            ChatStreamSpec {
                usage_chunk: false,
                deltas: 5,
                ..base()
            },
        ),
    ]
}

/// Independent oracle for LF-framed bodies: events split on `\n\n`, parsed as JSON values.
fn oracle_events(body: &[u8]) -> Vec<(Vec<u8>, Option<Value>)> {
    let text = std::str::from_utf8(body).expect("utf-8 body");
    text.split_inclusive("\n\n")
        .map(|raw| {
            let data: Vec<&str> = raw
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (
                raw.as_bytes().to_vec(),
                serde_json::from_str(&data.join("\n")).ok(),
            )
        })
        .collect()
}

fn is_usage_only(v: &Value) -> bool {
    v["choices"].as_array().is_some_and(Vec::is_empty)
        && !v["usage"].is_null()
        && v.get("usage").is_some()
}

fn oracle_stripped(body: &[u8]) -> Vec<u8> {
    oracle_events(body)
        .into_iter()
        .filter(|(_, v)| !v.as_ref().is_some_and(is_usage_only))
        .flat_map(|(raw, _)| raw)
        .collect()
}

fn oracle_usage(body: &[u8]) -> Option<(u64, u64, u64)> {
    let lf = String::from_utf8_lossy(body).replace("\r\n", "\n");
    oracle_events(lf.as_bytes())
        .into_iter()
        .filter_map(|(_, v)| v)
        .filter(|v| v["usage"].is_object())
        .map(|v| {
            let n = |k: &str| v["usage"][k].as_u64().unwrap_or(0);
            (
                n("prompt_tokens"),
                n("completion_tokens"),
                n("total_tokens"),
            )
        })
        .next_back()
}

/// Output bytes, whether every piece passed through untouched, and the record.
struct Run {
    output: Vec<u8>,
    all_passthrough: bool,
    record: UsageRecord,
    max_carried: usize,
}

fn run(body: &[u8], cuts: &[usize], protocol: StreamProtocol, strip: bool, max: usize) -> Run {
    let mut config = MeterConfig::sse(protocol, strip);
    config.max_event_bytes = max;
    run_with(body, cuts, config)
}

fn run_with(body: &[u8], cuts: &[usize], config: MeterConfig) -> Run {
    let t0 = Instant::now();
    let mut meter = ResponseMeter::new(config, t0);
    let mut output = Vec::new();
    let mut all_passthrough = true;
    let mut max_carried = 0;
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let cut = cut.clamp(from, body.len());
        let piece = &body[from..cut];
        from = cut;
        match meter.on_body(piece, t0) {
            BodyAction::Passthrough => output.extend_from_slice(piece),
            BodyAction::Replace(b) => {
                all_passthrough = false;
                output.extend_from_slice(&b);
            }
        }
        max_carried = max_carried.max(meter.carried_bytes());
    }
    if let Some(tail) = meter.on_end(t0) {
        output.extend_from_slice(&tail);
    }
    Run {
        output,
        all_passthrough,
        record: meter.finish(t0),
        max_carried,
    }
}

fn check_case_whole(case: &Case) -> (Run, Run) {
    let stripped = run(
        &case.body,
        &[],
        case.protocol,
        true,
        DEFAULT_MAX_EVENT_BYTES,
    );
    let plain = run(
        &case.body,
        &[],
        case.protocol,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    let name = &case.name;
    let expected_strip = case
        .stripped
        .clone()
        .unwrap_or_else(|| oracle_stripped(&case.body));
    let has_error = stripped.record.upstream_error.is_some();
    if !has_error {
        assert_eq!(stripped.output, expected_strip, "{name}: strip output");
        assert_eq!(plain.output, case.body, "{name}: passthrough output");
        assert!(plain.all_passthrough, "{name}: zero-copy passthrough");
    }
    let r = &stripped.record;
    match oracle_usage(&case.body) {
        Some((p, c, t)) => {
            assert_eq!(
                (r.prompt_tokens, r.completion_tokens, r.total_tokens),
                (p, c, t),
                "{name}"
            );
            assert!(
                matches!(
                    r.source,
                    UsageSource::UpstreamUsage | UsageSource::Continuous
                ),
                "{name}"
            );
        }
        None => assert!(
            matches!(r.source, UsageSource::Estimated | UsageSource::None),
            "{name}"
        ),
    }
    assert!(
        !r.truncated,
        "{name}: complete corpus streams are not truncated"
    );
    assert_eq!(r.unparsable_events, 0, "{name}");
    assert!(!r.overflowed, "{name}");
    let mut plain_record = plain.record.clone();
    plain_record.usage_chunks_stripped = r.usage_chunks_stripped;
    assert_eq!(
        &plain_record, r,
        "{name}: stripping does not change metering"
    );
    (stripped, plain)
}

#[test]
fn corpus_and_synthetic_streams_meter_as_expected() {
    for case in cases() {
        check_case_whole(&case);
    }
}

#[test]
fn known_corpus_numbers() {
    let by_name = |n: &str| {
        let c = cases().into_iter().find(|c| c.name == n).expect("case");
        run(&c.body, &[], c.protocol, true, DEFAULT_MAX_EVENT_BYTES)
    };
    let r = by_name("openai-chat-stream-include-usage.sse").record;
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (12, 100, 112)
    );
    assert_eq!(
        (r.cached_prompt_tokens, r.reasoning_tokens),
        (Some(0), Some(100))
    );
    assert_eq!(
        r.finish_reasons,
        vec![ChoiceFinish {
            index: 0,
            reason: "length".into()
        }]
    );
    assert_eq!(r.usage_chunks_stripped, 1);

    let r = by_name("vllm-0.6-chat-stream-toolcalls-continuous-usage.sse").record;
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (226, 20, 246)
    );
    assert!(r.continuous_usage);
    assert_eq!(r.tool_call_deltas, 7);
    assert_eq!(r.source, UsageSource::UpstreamUsage);
    assert_eq!(r.finish_reasons[0].reason, "tool_calls");

    let r = by_name("openai-completion-stream-include-usage.sse").record;
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (31, 25, 56)
    );
    assert_eq!(r.content_deltas, 25);

    let r = by_name("openai-chat-stream-multibyte.sse").record;
    assert_eq!(r.source, UsageSource::Estimated);
    assert_eq!(r.completion_tokens, r.estimated_completion_tokens);
    assert!(r.completion_tokens >= r.content_deltas && r.done_seen);

    let r = by_name("triton-trtllm-generate-stream-event.txt").record;
    assert_eq!(
        (r.content_deltas, r.source, r.truncated),
        (1, UsageSource::Estimated, false)
    );
    assert_eq!(r.completion_tokens, 21); // ceil(84 chars / 4)

    let r = by_name("vllm-completions-stream-usage-chunks.txt").record;
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (7, 10, 17)
    );
    assert_eq!(r.usage_chunks_stripped, 1);
}

#[test]
fn vllm_midstream_errors_are_normalised() {
    for name in [
        "DERIVED-vllm-midstream-error-v0.10.1plus.sse",
        "DERIVED-vllm-midstream-error-pre-v0.10.1.sse",
    ] {
        let body = corpus(name);
        let out = run(
            &body,
            &[],
            StreamProtocol::OpenAi,
            false,
            DEFAULT_MAX_EVENT_BYTES,
        );
        let events = oracle_events(&out.output);
        assert_eq!(events.len(), 2, "{name}");
        let error = events[0].1.as_ref().expect("json");
        assert!(upstream_error::is_openai_shaped(
            serde_json::to_string(error).unwrap().as_bytes()
        ));
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["code"], "context_length_exceeded");
        assert_eq!(events[1].0, b"data: [DONE]\n\n");
        let r = &out.record;
        assert!(!r.truncated && r.done_seen);
        assert_eq!(
            r.upstream_error.as_ref().map(|e| e.kind.as_str()),
            Some("invalid_request_error")
        );
        assert_eq!(r.source, UsageSource::None);
    }
}

/// Acceptance: a single split at every byte gives identical metering and output.
#[test]
fn every_single_split_is_identical() {
    for case in cases() {
        let (whole_strip, whole_plain) = check_case_whole(&case);
        for i in 0..=case.body.len() {
            let s = run(
                &case.body,
                &[i],
                case.protocol,
                true,
                DEFAULT_MAX_EVENT_BYTES,
            );
            assert_eq!(
                s.record, whole_strip.record,
                "{} strip split {i}",
                case.name
            );
            assert_eq!(
                s.output, whole_strip.output,
                "{} strip split {i}",
                case.name
            );
            let p = run(
                &case.body,
                &[i],
                case.protocol,
                false,
                DEFAULT_MAX_EVENT_BYTES,
            );
            assert_eq!(
                p.record, whole_plain.record,
                "{} plain split {i}",
                case.name
            );
            assert_eq!(
                p.output, whole_plain.output,
                "{} plain split {i}",
                case.name
            );
            // Neither stripping nor error rewriting: every piece passes untouched (zero copies).
            let mut pure = MeterConfig::sse(case.protocol, false);
            pure.normalize_error_events = false;
            let pure = run_with(&case.body, &[i], pure);
            assert!(pure.all_passthrough, "{} split {i}: passthrough", case.name);
            assert_eq!(
                pure.output, case.body,
                "{} split {i}: passthrough",
                case.name
            );
            assert_eq!(pure.record.content_deltas, p.record.content_deltas);
        }
    }
}

fn cuts_strategy() -> impl Strategy<Value = (usize, Vec<usize>)> {
    let n = cases().len();
    (
        0..n,
        prop::collection::vec(
            prop_oneof![3 => Just(1usize), 2 => 1usize..8, 1 => 8usize..400],
            1..400,
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
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Acceptance: random multi-splits (many 1-byte pieces) give identical results.
    #[test]
    fn random_multi_splits_are_identical((index, cuts) in cuts_strategy()) {
        let case = &cases()[index];
        for strip in [true, false] {
            let whole = run(&case.body, &[], case.protocol, strip, DEFAULT_MAX_EVENT_BYTES);
            let split = run(&case.body, &cuts, case.protocol, strip, DEFAULT_MAX_EVENT_BYTES);
            prop_assert_eq!(&split.record, &whole.record, "{} strip={}", &case.name, strip);
            prop_assert_eq!(&split.output, &whole.output, "{} strip={}", &case.name, strip);
        }
    }

    /// Arbitrary bytes in arbitrary pieces: no panic, carried bytes stay within the bound.
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        body in prop::collection::vec(prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(b':'), 1 => Just(b' '), 1 => Just(b'{'),
        ], 0..3000),
        cuts in prop::collection::vec(0usize..3000, 0..40),
        strip in any::<bool>(),
        triton in any::<bool>(),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let protocol = if triton { StreamProtocol::TritonGenerate } else { StreamProtocol::OpenAi };
        let r = run(&body, &cuts, protocol, strip, 64);
        prop_assert!(r.max_carried <= 64, "carried {}", r.max_carried);
        prop_assert_eq!(r.record.body_bytes, body.len() as u64);
    }

    /// Event-shaped fragments reach the deeper paths (usage, errors, overflow, truncation).
    #[test]
    fn fragment_soup_never_panics_and_stays_bounded(
        parts in prop::collection::vec(prop::sample::select(vec![
            "data: ", "data:", "{\"choices\":[]", ",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}", "}",
            "\n", "\r\n", "\r", "\n\n", "[DONE]", "{\"error\":", "\"boom\"", "{\"message\":\"m\",\"code\":500}",
            "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"é🙂\"}}]}", ": c\n", "event: e\n", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ]), 0..200),
        cuts in prop::collection::vec(0usize..4000, 0..60),
        strip in any::<bool>(),
    ) {
        let body: Vec<u8> = parts.concat().into_bytes();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = run(&body, &[], StreamProtocol::OpenAi, strip, 96);
        let split = run(&body, &cuts, StreamProtocol::OpenAi, strip, 96);
        prop_assert!(split.max_carried <= 96);
        if !whole.record.overflowed && !split.record.overflowed {
            prop_assert_eq!(&split.record, &whole.record);
            prop_assert_eq!(&split.output, &whole.output);
        }
    }
}

fn stream_without_done() -> Vec<u8> {
    chat_stream(&ChatStreamSpec {
        done: false,
        usage_chunk: false,
        ..ChatStreamSpec::default()
    })
    .body
}

#[test]
fn missing_done_is_truncated_and_gets_an_error_event() {
    let body = stream_without_done();
    let r = run(
        &body,
        &[],
        StreamProtocol::OpenAi,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    assert!(r.record.truncated && !r.record.done_seen);
    assert_eq!(r.record.source, UsageSource::Estimated);
    let tail = &r.output[body.len()..];
    assert_eq!(tail, &truncation_error_event(StreamProtocol::OpenAi)[..]);
    let last = oracle_events(&r.output)
        .pop()
        .and_then(|(_, v)| v)
        .expect("error event json");
    assert_eq!(last["error"]["code"], "stream_truncated");
    assert!(upstream_error::is_openai_shaped(
        last.to_string().as_bytes()
    ));

    let complete = chat_stream(&ChatStreamSpec::default()).body;
    let mut meter = ResponseMeter::new(
        MeterConfig::sse(StreamProtocol::OpenAi, false),
        Instant::now(),
    );
    assert_eq!(
        meter.on_body(&complete, Instant::now()),
        BodyAction::Passthrough
    );
    assert_eq!(meter.on_end(Instant::now()), None);
    assert_eq!(meter.end_of_stream_error_event(), None);
    assert!(!meter.finish(Instant::now()).truncated);
}

#[test]
fn a_cut_event_is_terminated_before_the_error_event() {
    let body = stream_without_done();
    for (cut_body, terminator) in [
        (&body[..body.len() - 30], &b"\n\n"[..]), // mid-line
        (&body[..body.len() - 1], &b"\n"[..]),    // after the data line, before the blank line
        (&body[..body.len() - 2], &b"\n\n"[..]),  // just before the data line's newline
    ] {
        for strip in [false, true] {
            let r = run(
                cut_body,
                &[],
                StreamProtocol::OpenAi,
                strip,
                DEFAULT_MAX_EVENT_BYTES,
            );
            let mut expected = cut_body.to_vec();
            expected.extend_from_slice(terminator);
            expected.extend_from_slice(&truncation_error_event(StreamProtocol::OpenAi));
            assert_eq!(r.output, expected, "strip={strip}");
            assert!(r.record.truncated);
        }
    }
}

#[test]
fn aborted_stream_without_on_end_is_still_truncated() {
    let body = stream_without_done();
    let mut meter = ResponseMeter::new(
        MeterConfig::sse(StreamProtocol::OpenAi, true),
        Instant::now(),
    );
    let _ = meter.on_body(&body, Instant::now());
    let r = meter.finish(Instant::now());
    assert!(r.truncated);
    assert!(meter.end_of_stream_error_event().is_some());
}

#[test]
fn triton_clean_end_is_not_truncated_but_a_cut_is() {
    let body = normalise_payload(&corpus("triton-trtllm-generate-stream-event.txt"));
    let clean = run(
        &body,
        &[],
        StreamProtocol::TritonGenerate,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    assert!(!clean.record.truncated);
    assert_eq!(clean.output, body);
    let cut = &body[..body.len() - 10];
    let r = run(
        cut,
        &[],
        StreamProtocol::TritonGenerate,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    assert!(r.record.truncated);
    assert!(r
        .output
        .ends_with(&truncation_error_event(StreamProtocol::TritonGenerate)));
    // As OpenAI protocol, the same clean stream lacks [DONE]: truncated.
    let r = run(
        &body,
        &[],
        StreamProtocol::OpenAi,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    assert!(r.record.truncated);
}

#[test]
fn triton_error_event_is_normalised() {
    let body = b"data: {\"text_output\":\"a\"}\n\ndata: {\"error\":\"Request was cancelled\"}\n\n";
    let r = run(
        body,
        &[],
        StreamProtocol::TritonGenerate,
        false,
        DEFAULT_MAX_EVENT_BYTES,
    );
    let events = oracle_events(&r.output);
    assert_eq!(events[0].0, b"data: {\"text_output\":\"a\"}\n\n");
    let e = events[1].1.as_ref().expect("json");
    assert_eq!(e["error"]["message"], "Request was cancelled");
    assert_eq!(e["error"]["type"], "server_error");
    assert_eq!(e["error"]["code"], "upstream_error");
}

#[test]
fn timing_ttft_and_gaps() {
    let body = chat_stream(&ChatStreamSpec {
        deltas: 3,
        ..ChatStreamSpec::default()
    })
    .body;
    let events: Vec<&[u8]> = body.split_inclusive(|b| *b == b'\n').collect();
    let t0 = Instant::now();
    let mut meter = ResponseMeter::new(MeterConfig::sse(StreamProtocol::OpenAi, true), t0);
    for (i, line) in events.iter().enumerate() {
        let _ = meter.on_body(line, t0 + Duration::from_millis(100 + 10 * i as u64));
    }
    let r = meter.finish(t0);
    // Lines: role(0,1) "Hello"(2,3) " café"(4,5) " 日本"(6,7): the first content completes at line 3.
    assert_eq!(r.ttft, Some(Duration::from_millis(130)));
    assert_eq!(r.inter_token.count, 2);
    assert_eq!(r.inter_token.max, Duration::from_millis(20));
}

#[test]
fn oversized_event_abandons_stripping_and_passes_everything() {
    let mut body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'x', 500));
    body.extend_from_slice(b"\"}}]}\n\n");
    let tail = chat_stream(&ChatStreamSpec::default()).body;
    body.extend_from_slice(&tail);
    let r = run(&body, &[100, 300, 520], StreamProtocol::OpenAi, true, 256);
    assert!(r.record.overflowed);
    assert_eq!(r.output, body, "gave up stripping: usage chunk passes");
    assert!(r.max_carried <= 256);
    assert_eq!(r.record.completion_tokens, 8, "later events still metered");
}

// ---- non-streaming JSON ----

fn json_usage_oracle(body: &[u8]) -> Option<WireUsage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    serde_json::from_value(v.get("usage")?.clone()).ok()
}

fn meter_json(body: &[u8], cuts: &[usize]) -> UsageRecord {
    let mut m = ResponseMeter::new(MeterConfig::json(200), Instant::now());
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        assert_eq!(
            m.on_body(&body[from..cut], Instant::now()),
            BodyAction::Passthrough
        );
        from = cut;
    }
    assert_eq!(m.on_end(Instant::now()), None);
    m.finish(Instant::now())
}

#[test]
fn json_usage_split_at_every_byte() {
    for name in [
        "trtllm-serve-completion-nonstream.json",
        "vllm-0.11-chat-nonstream.pretty.json",
        "vllm-completion-nonstream-multibyte.pretty.json",
    ] {
        let body = corpus(name);
        let expected = json_usage_oracle(&body).expect("usage in corpus file");
        let whole = meter_json(&body, &[]);
        assert_eq!(whole.source, UsageSource::UpstreamUsage, "{name}");
        assert_eq!(
            (
                whole.prompt_tokens,
                whole.completion_tokens,
                whole.total_tokens,
                whole.cached_prompt_tokens
            ),
            (
                expected.prompt_tokens.unwrap_or(0),
                expected.completion_tokens.unwrap_or(0),
                expected.total(),
                expected.cached_tokens()
            ),
            "{name}"
        );
        assert!(!whole.truncated, "{name}");
        for i in 0..=body.len() {
            assert_eq!(meter_json(&body, &[i]), whole, "{name} split {i}");
        }
    }
}

#[test]
fn json_error_bodies_are_captured() {
    let r = meter_json(&corpus("openai-404-model-not-found.json"), &[]);
    let e = r.upstream_error.expect("error");
    assert_eq!(
        (e.kind.as_str(), e.code.as_deref()),
        ("invalid_request_error", Some("model_not_found"))
    );
    let mut m = ResponseMeter::new(MeterConfig::json(404), Instant::now());
    let _ = m.on_body(br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#, Instant::now());
    assert!(
        m.finish(Instant::now()).upstream_error.is_none(),
        "flat shape has no `error` key: the caller normalises the body"
    );
}

#[test]
fn five_megabyte_embeddings_body_keeps_memory_bounded() {
    let mut body = br#"{"object":"list","data":["#.to_vec();
    let mut i = 0u64;
    while body.len() < 5 * 1024 * 1024 {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(
            format!(r#"{{"object":"embedding","index":{i},"embedding":["#).as_bytes(),
        );
        for k in 0..256u64 {
            if k > 0 {
                body.push(b',');
            }
            body.extend_from_slice(
                format!("{:.6}", ((i * 31 + k) % 1000) as f64 / -997.0).as_bytes(),
            );
        }
        body.extend_from_slice(b"]}");
        i += 1;
    }
    body.extend_from_slice(
        br#"],"model":"e5","usage":{"prompt_tokens":4096,"total_tokens":4096}}"#,
    );
    let mut m = ResponseMeter::new(MeterConfig::json(200), Instant::now());
    let mut max_carried = 0;
    for piece in body.chunks(8 * 1024) {
        let _ = m.on_body(piece, Instant::now());
        max_carried = max_carried.max(m.carried_bytes());
    }
    let r = m.finish(Instant::now());
    assert!(max_carried <= 256, "carried {max_carried}");
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (4096, 0, 4096)
    );
    assert_eq!(r.body_bytes, body.len() as u64);
}

/// Run once in release: `cargo test --release throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let events = 20_000;
    let body = large_chat_stream(events);
    for (strip, piece) in [(false, 4096), (true, 4096), (false, 64 * 1024)] {
        let t = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            let (r, _) = meter_in_pieces(&body, piece, strip, t);
            assert_eq!(r.completion_tokens, events as u64);
        }
        let secs = t.elapsed().as_secs_f64() / f64::from(rounds);
        println!(
            "strip={strip} piece={piece}: {} bytes, {:.0} MB/s, {:.0} ns/event",
            body.len(),
            body.len() as f64 / secs / 1e6,
            secs * 1e9 / (events as f64 + 3.0)
        );
    }
    let mut json = ResponseMeter::new(MeterConfig::json(200), Instant::now());
    let embed: Vec<u8> = format!(
        "{{\"data\":[{}0.1],\"usage\":{{\"prompt_tokens\":1}}}}",
        "-0.012345,".repeat(500_000)
    )
    .into_bytes();
    let t = Instant::now();
    for piece in embed.chunks(16 * 1024) {
        let _ = json.on_body(piece, t);
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(json.finish(t).prompt_tokens, 1);
    println!("json scan: {:.0} MB/s", embed.len() as f64 / secs / 1e6);
}
