#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const SERVED: &str = "org/served-model";
const ALIAS: &str = "my-alias";

fn n(names: &[&str]) -> Arc<[String]> {
    names.iter().map(|s| s.to_string()).collect()
}

fn rewriter(shape: Shape, framing: Framing) -> ModelRewriter {
    ModelRewriter::new(n(&[SERVED]), ALIAS, shape, framing).unwrap()
}

/// The body fed in the given pieces, plus `finish`.
fn run(shape: Shape, framing: Framing, pieces: &[&[u8]]) -> Vec<u8> {
    let mut r = rewriter(shape, framing);
    let mut out = Vec::new();
    for piece in pieces {
        match r.rewrite(piece) {
            Some(b) => out.extend_from_slice(&b),
            None => out.extend_from_slice(piece),
        }
    }
    if let Some(tail) = r.finish() {
        out.extend_from_slice(&tail);
    }
    out
}

fn whole(shape: Shape, framing: Framing, body: &str) -> String {
    String::from_utf8(run(shape, framing, &[body.as_bytes()])).unwrap()
}

/// `(upstream text, what the client must get)`; `@` stands for the served name in the input
/// and for the alias in the expectation where it must be rewritten, `#` for the served name
/// kept in both.
const OPENAI_EVENTS: &[&str] = &[
    r##"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"@","choices":[{"index":0,"delta":{"content":"Hello"}}]}"##,
    r##"data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"model\":\"#\"}"}}]}}],"model" : "@" }"##,
    r##"data: {"choices":[{"delta":{"content":"say \"model\":\"#\" and {\"model\":\"#\"}"}}],"model":"@"}"##,
    r##"data: {"model":"other-model","choices":[]}"##,
    r##"data: {"model":"#-v2","choices":[]}"##,
    r##"data: {"model":"org\/served-model","x":1}"##,
    r##"data: {"mod\u0065l":"@"}"##,
    r##"data: {"x":{"model":"#"},"y":[{"model":"#"}],"z":["model","#"],"model":"@"}"##,
    r##"data: {"model":5,"n":"#"}"##,
    r##"data: {"usage":{"prompt_tokens":3},"model":"@","choices":[]}"##,
    "data: [DONE]",
    ": keep-alive comment",
];

const ANTHROPIC_EVENTS: &[&str] = &[
    r##"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"@","stop_reason":null,"usage":{"input_tokens":3,"output_tokens":0}}}"##,
    r##"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"model\": \"#\""}}"##,
    r##"event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","input":{"model":"#"}}}"##,
    r##"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"##,
    r##"event: error
data: {"type":"error","error":{"type":"api_error","message":"model #"}}"##,
];

fn expand(template: &str) -> (String, String) {
    let input = template.replace(['@', '#'], SERVED);
    let expected = template.replace('@', ALIAS).replace('#', SERVED);
    (input, expected)
}

fn stream_of(events: &[&str], picks: &[usize]) -> (String, String) {
    let (mut input, mut expected) = (String::new(), String::new());
    for &p in picks {
        let (i, e) = expand(events[p % events.len()]);
        input.push_str(&i);
        input.push_str("\n\n");
        expected.push_str(&e);
        expected.push_str("\n\n");
    }
    (input, expected)
}

#[test]
fn every_openai_event_is_rewritten_only_where_it_should_be() {
    for template in OPENAI_EVENTS {
        let (input, expected) = expand(template);
        let expected = expected.replace(r#""org\/served-model""#, &format!("\"{ALIAS}\""));
        assert_eq!(
            whole(Shape::OpenAi, Framing::Sse, &input),
            expected,
            "{template}"
        );
    }
}

#[test]
fn anthropic_message_start_model_is_rewritten_and_nested_ones_kept() {
    for template in ANTHROPIC_EVENTS {
        let (input, expected) = expand(template);
        assert_eq!(whole(Shape::Anthropic, Framing::Sse, &input), expected);
    }
    // OpenAI's shape leaves `message.model` alone (it is not top-level there).
    let (input, _) = expand(ANTHROPIC_EVENTS[0]);
    assert_eq!(whole(Shape::OpenAi, Framing::Sse, &input), input);
}

#[test]
fn responses_events_rewrite_response_model_only() {
    let created = format!(
        r#"{{"type":"response.created","sequence_number":0,"response":{{"id":"resp_1","model":"{SERVED}","output":[],"metadata":{{"model":"{SERVED}"}}}}}}"#
    );
    let delta = format!(
        r#"{{"type":"response.output_text.delta","delta":""model":"{SERVED}"","item_id":"m"}}"#
    );
    let input = format!("event: response.created\ndata: {created}\n\nevent: response.output_text.delta\ndata: {delta}\n\n");
    let expected = input.replacen(SERVED, ALIAS, 1);
    assert_eq!(whole(Shape::Responses, Framing::Sse, &input), expected);
    for at in 0..=input.len() {
        let (a, b) = input.as_bytes().split_at(at);
        let out = run(Shape::Responses, Framing::Sse, &[a, b]);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {at}");
    }
    // Anthropic's shape leaves `response.model` alone, and Responses' leaves `message.model`.
    assert_eq!(whole(Shape::Anthropic, Framing::Sse, &input), input);
    let body = format!(r#"{{"id":"resp_1","object":"response","model":"{SERVED}","output":[]}}"#);
    assert_eq!(
        whole(Shape::Responses, Framing::Json, &body),
        body.replace(SERVED, ALIAS)
    );
}

#[test]
fn non_streaming_bodies_keep_every_other_byte() {
    let body = format!(
        "{{\n  \"id\": \"chatcmpl-1\",\n  \"object\" : \"chat.completion\",\n  \"model\"\t:\n \"{SERVED}\",\n  \"choices\": [{{\"message\": {{\"role\": \"assistant\", \"content\": \"\\\"model\\\": \\\"{SERVED}\\\"\"}}}}]\n}}\n"
    );
    let out = whole(Shape::OpenAi, Framing::Json, &body);
    assert_eq!(
        out,
        body.replacen(&format!("\"{SERVED}\""), &format!("\"{ALIAS}\""), 1)
    );
    let embeddings = format!(
        r#"{{"object":"list","data":[{{"object":"embedding","embedding":[0.1,-2e-3],"index":0}}],"model":"{SERVED}","usage":{{"prompt_tokens":2,"total_tokens":2}}}}"#
    );
    assert_eq!(
        whole(Shape::OpenAi, Framing::Json, &embeddings),
        embeddings.replace(SERVED, ALIAS)
    );
    let messages = format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","model":"{SERVED}","content":[{{"type":"text","text":"hi"}}]}}"#
    );
    assert_eq!(
        whole(Shape::Anthropic, Framing::Json, &messages),
        messages.replace(SERVED, ALIAS)
    );
}

#[test]
fn the_alias_is_json_escaped_and_equal_names_cost_nothing() {
    assert!(ModelRewriter::new(n(&["same", ""]), "same", Shape::OpenAi, Framing::Json).is_none());
    let mut r = ModelRewriter::new(n(&["m"]), "a\"b/\u{1}", Shape::OpenAi, Framing::Json).unwrap();
    let out = r.rewrite(br#"{"model":"m"}"#).unwrap();
    assert_eq!(&out[..], br#"{"model":"a\"b/\u0001"}"#);
    // A body without a candidate passes as it is (no copy).
    let mut r = rewriter(Shape::OpenAi, Framing::Json);
    assert!(r.rewrite(br#"{"id":"x","choices":[]}"#).is_none());
}

#[test]
fn a_cut_value_is_released_as_it_came() {
    let mut r = rewriter(Shape::OpenAi, Framing::Sse);
    let out = r.rewrite(br#"data: {"model":"org/ser"#).unwrap();
    assert_eq!(&out[..], br#"data: {"model":""#);
    assert_eq!(&r.finish().unwrap()[..], b"org/ser");
    // A line break ends an SSE event's JSON: the next event is scanned afresh.
    let (input, expected) = stream_of(OPENAI_EVENTS, &[0]);
    let cut = format!("data: {{\"model\":\"org/ser\n\n{input}");
    let want = format!("data: {{\"model\":\"org/ser\n\n{expected}");
    assert_eq!(whole(Shape::OpenAi, Framing::Sse, &cut), want);
}

#[test]
fn a_long_value_is_let_go_and_state_stays_bounded() {
    let long = "x".repeat(10_000);
    let body = format!(r#"{{"model":"{long}","id":"{long}"}}"#);
    let mut r = rewriter(Shape::OpenAi, Framing::Json);
    let out = r.rewrite(body.as_bytes());
    assert_eq!(out.as_deref().unwrap_or(body.as_bytes()), body.as_bytes());
    assert!(r.held.capacity() <= 6 * SERVED.len() + 64);
    assert!(r.key.capacity() <= 2 * MAX_KEY + 64);
    // A key of any length: only its first bytes are kept.
    let body = format!(r#"{{"{long}":1,"model":"{SERVED}"}}"#);
    assert_eq!(
        whole(Shape::OpenAi, Framing::Json, &body),
        body.replace(SERVED, ALIAS)
    );
    assert!(r.key.capacity() <= 2 * MAX_KEY + 64);
}

#[test]
fn split_at_every_byte_matches_the_unsplit_rewrite() {
    let picks: Vec<usize> = (0..OPENAI_EVENTS.len()).collect();
    let (input, expected) = stream_of(OPENAI_EVENTS, &picks);
    let expected = expected.replace(r#""org\/served-model""#, &format!("\"{ALIAS}\""));
    let bytes = input.as_bytes();
    for at in 0..=bytes.len() {
        let out = run(Shape::OpenAi, Framing::Sse, &[&bytes[..at], &bytes[at..]]);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {at}");
    }
    let picks: Vec<usize> = (0..ANTHROPIC_EVENTS.len()).collect();
    let (input, expected) = stream_of(ANTHROPIC_EVENTS, &picks);
    let bytes = input.as_bytes();
    for at in 0..=bytes.len() {
        let out = run(
            Shape::Anthropic,
            Framing::Sse,
            &[&bytes[..at], &bytes[at..]],
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {at}");
    }
    // One byte at a time.
    let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        String::from_utf8(run(Shape::Anthropic, Framing::Sse, &pieces)).unwrap(),
        expected
    );
}

/// Splits `bytes` at the given cut points (any order, duplicates allowed).
fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for c in cuts {
        pieces.push(&bytes[from..c]);
        from = c;
    }
    pieces.push(&bytes[from..]);
    pieces
}

proptest! {
    #[test]
    fn random_streams_and_splits_rewrite_exactly(
        picks in prop::collection::vec(0usize..64, 1..12),
        cuts in prop::collection::vec(0usize..10_000, 0..16),
        anthropic in any::<bool>(),
    ) {
        let (shape, events) = if anthropic {
            (Shape::Anthropic, ANTHROPIC_EVENTS)
        } else {
            (Shape::OpenAi, OPENAI_EVENTS)
        };
        let (input, expected) = stream_of(events, &picks);
        let expected = expected.replace(r#""org\/served-model""#, &format!("\"{ALIAS}\""));
        let bytes = input.as_bytes();
        let unsplit = run(shape, Framing::Sse, &[bytes]);
        prop_assert_eq!(String::from_utf8(unsplit.clone()).unwrap(), expected);
        let split = run(shape, Framing::Sse, &split_at(bytes, &cuts));
        prop_assert_eq!(split, unsplit);
    }

    /// Arbitrary bytes: never a panic, splits never change the output, and without the
    /// served name in the input nothing changes.
    #[test]
    fn arbitrary_bytes_pass_unchanged_and_split_safely(
        body in prop::collection::vec(
            prop::sample::select(b"{}[]\":,\\ \nmodelsag/-x0".to_vec()), 0..200),
        cuts in prop::collection::vec(0usize..1_000, 0..8),
        sse in any::<bool>(),
    ) {
        let framing = if sse { Framing::Sse } else { Framing::Json };
        let unsplit = run(Shape::Anthropic, framing, &[&body]);
        let split = run(Shape::Anthropic, framing, &split_at(&body, &cuts));
        prop_assert_eq!(&split, &unsplit);
        let mut r = ModelRewriter::new(n(&["zz"]), ALIAS, Shape::Anthropic, framing).unwrap();
        let out = r.rewrite(&body);
        let mut got = out.map_or_else(|| body.clone(), |b| b.to_vec());
        if let Some(t) = r.finish() {
            got.extend_from_slice(&t);
        }
        prop_assert_eq!(got, body);
    }
}

/// The body through the run-at-a-time scan and through the byte-by-byte reference: what the
/// client gets and the state left behind.
fn fast_and_reference(shape: Shape, framing: Framing, pieces: &[&[u8]]) -> [(Vec<u8>, String); 2] {
    let mut fast = rewriter(shape, framing);
    let mut reference = rewriter(shape, framing);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for piece in pieces {
        a.extend_from_slice(
            &fast
                .rewrite_runs::<true>(piece)
                .unwrap_or_else(|| Bytes::copy_from_slice(piece)),
        );
        b.extend_from_slice(
            &reference
                .rewrite_runs::<false>(piece)
                .unwrap_or_else(|| Bytes::copy_from_slice(piece)),
        );
    }
    let (state_a, state_b) = (format!("{fast:?}"), format!("{reference:?}"));
    a.extend_from_slice(&fast.finish().unwrap_or_default());
    b.extend_from_slice(&reference.finish().unwrap_or_default());
    [(a, state_a), (b, state_b)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Taking runs at once changes nothing: output and state equal the byte-by-byte scan's,
    /// on structured streams and on arbitrary bytes (long keys, numbers, blanks, CRs), split
    /// anywhere.
    #[test]
    fn runs_match_the_byte_by_byte_scan(
        picks in prop::collection::vec(0usize..64, 1..8),
        noise in prop::collection::vec(
            prop::sample::select(b"{}[]\":,\\ \t\r\nmodelsag/-x0123456789etrunl".to_vec()), 0..300),
        long_key in any::<bool>(),
        cuts in prop::collection::vec(0usize..10_000, 0..8),
        anthropic in any::<bool>(),
        sse in any::<bool>(),
    ) {
        let (shape, events) = if anthropic {
            (Shape::Anthropic, ANTHROPIC_EVENTS)
        } else {
            (Shape::OpenAi, OPENAI_EVENTS)
        };
        let framing = if sse { Framing::Sse } else { Framing::Json };
        let (mut input, _) = stream_of(events, &picks);
        if long_key {
            input.insert_str(0, &format!("{{\"{}\":1,\"model\":\"{SERVED}\"}}\n", "k".repeat(40)));
        }
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(&noise);
        let [fast, reference] = fast_and_reference(shape, framing, &split_at(&bytes, &cuts));
        prop_assert_eq!(fast, reference);
    }
}

#[test]
fn any_served_name_of_the_replica_is_the_alias_again() {
    // vLLM with `--served-model-name first second` answers `second` requests with `first`.
    let names = ["second", "first", "second", ALIAS];
    let mut r = ModelRewriter::new(n(&names), ALIAS, Shape::OpenAi, Framing::Json).unwrap();
    let out = r.rewrite(br#"{"model":"first","x":"second"}"#).unwrap();
    assert_eq!(&out[..], br#"{"model":"my-alias","x":"second"}"#);
    let mut r = ModelRewriter::new(n(&names), ALIAS, Shape::OpenAi, Framing::Json).unwrap();
    let out = r.rewrite(br#"{"model":"second"}"#).unwrap();
    assert_eq!(&out[..], br#"{"model":"my-alias"}"#);
    let mut r = ModelRewriter::new(n(&names), ALIAS, Shape::OpenAi, Framing::Json).unwrap();
    let body = br#"{"model":"third"}"#;
    assert_eq!(&r.rewrite(body).unwrap()[..], body);
    assert!(ModelRewriter::new(n(&[ALIAS, ALIAS]), ALIAS, Shape::OpenAi, Framing::Json).is_none());
}

fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).unwrap()
}

/// Real captured bodies (tests/corpus): with the served name they carry, every top-level
/// `model` value becomes the alias and nothing else changes, whole and split at every byte.
#[test]
fn corpus_bodies_get_the_alias_and_nothing_else_changes() {
    let model = regex::Regex::new(r#"("model"\s*:\s*)"([^"]+)""#).unwrap();
    for (name, framing) in [
        ("openai-chat-stream-include-usage.sse", Framing::Sse),
        ("openai-chat-stream-multibyte.sse", Framing::Sse),
        ("openai-completion-stream-include-usage.sse", Framing::Sse),
        (
            "vllm-0.6-chat-stream-toolcalls-continuous-usage.sse",
            Framing::Sse,
        ),
        ("vllm-0.11-chat-nonstream.pretty.json", Framing::Json),
        (
            "vllm-completion-nonstream-multibyte.pretty.json",
            Framing::Json,
        ),
        ("trtllm-serve-completion-nonstream.json", Framing::Json),
    ] {
        let body = corpus(name);
        let text = String::from_utf8(body.clone()).unwrap();
        let served = model.captures(&text).unwrap()[2].to_string();
        let expected = model.replace_all(&text, format!("${{1}}\"{ALIAS}\""));
        assert_ne!(expected, text, "{name}");
        let mut r =
            ModelRewriter::new(n(&[served.as_str()]), ALIAS, Shape::OpenAi, framing).unwrap();
        let mut out = r
            .rewrite(&body)
            .map_or_else(|| body.clone(), |b| b.to_vec());
        out.extend(r.finish().unwrap_or_default());
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{name}");
        let step = if body.len() > 4096 { 7 } else { 1 };
        for at in (0..=body.len()).step_by(step) {
            let mut r =
                ModelRewriter::new(n(&[served.as_str()]), ALIAS, Shape::OpenAi, framing).unwrap();
            let mut out = Vec::new();
            for piece in [&body[..at], &body[at..]] {
                out.extend_from_slice(
                    &r.rewrite(piece)
                        .map_or_else(|| piece.to_vec(), |b| b.to_vec()),
                );
            }
            out.extend(r.finish().unwrap_or_default());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "{name} split at {at}"
            );
        }
    }
}
