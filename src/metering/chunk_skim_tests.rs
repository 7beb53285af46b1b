//! The fast chunk walker against serde: whenever it answers, serde reads the same facts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::chunk::Chunk;
use super::chunk_skim::{skim, EventFacts};
use proptest::prelude::*;

fn serde_facts<'a>(data: &'a [u8]) -> Option<EventFacts<'a>> {
    // Leaked so the borrowed facts can outlive this helper (tests only).
    let chunk: &'a Chunk<'a> = Box::leak(Box::new(serde_json::from_slice(data).ok()?));
    Some(chunk.facts())
}

/// The fast path's one promise.
fn agrees(data: &[u8]) {
    if let Some(fast) = skim(data) {
        let slow = serde_facts(data).unwrap_or_else(|| {
            panic!(
                "skim answered, serde refused: {:?}",
                String::from_utf8_lossy(data)
            )
        });
        assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(data));
    }
}

const VLLM_CHUNK: &str = r#"{"id":"chatcmpl-6f7c1d2e","object":"chat.completion.chunk","created":1733100000,"model":"bench-model","choices":[{"index":0,"delta":{"content":" tok7"},"logprobs":null,"finish_reason":null}]}"#;

#[test]
fn an_ordinary_vllm_chunk_takes_the_fast_path() {
    let facts = skim(VLLM_CHUNK.as_bytes()).expect("fast path");
    assert_eq!(facts.content_deltas, 1);
    assert_eq!(facts.text_chars, 5);
    assert!(facts.has_choices && facts.token_event() && facts.finishes.is_empty());
    agrees(VLLM_CHUNK.as_bytes());

    let last = r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":2,"delta":{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null}]}"#;
    let facts = skim(last.as_bytes()).expect("fast path");
    assert_eq!(facts.finishes, vec![(2, "length")]);
    assert!(!facts.token_event());
    agrees(last.as_bytes());

    let completion = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"caf\u00e9 \"日本\" 🙂\n","logprobs":{"tokens":["a"],"top_logprobs":[{"a":-0.5}]},"finish_reason":null}]}"#;
    let facts = skim(completion.as_bytes()).expect("fast path");
    assert_eq!(facts.text_chars, 12);
    agrees(completion.as_bytes());
}

#[test]
fn what_the_fast_path_leaves_to_serde() {
    for data in [
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
        r#"{"error":{"message":"boom","type":"internal","code":500}}"#,
        r#"{"text_output":"abc"}"#,
        r#"{"cho\u0069ces":[]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"\ud83d\ude42"}}]}"#,
        r#"{"choices":[{"index":0,"finish_reason":"st\u006fp"}]}"#,
        r#"{"choices":null,"choices":[]}"#,
        r#"[null,null,null,null]"#,
        r#"{"choices":[{"index":1.0}]}"#,
    ] {
        assert!(skim(data.as_bytes()).is_none(), "{data}");
        agrees(data.as_bytes());
    }
}

#[test]
fn malformed_events_are_never_answered() {
    for data in [
        "",
        "{",
        "{}}",
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":tru}"#,
        r#"{"a":"\x"}"#,
        "{\"a\":\"\u{1}\"}",
        r#"{"a":[1,]}"#,
        r#"{"a":1,}"#,
        r#"{"choices":[{"index":-1}]}"#,
        r#"{"choices":[{"index":4294967296}]}"#,
        r#"{"choices":[{"delta":{"content":5}}]}"#,
        r#"{"a":"\u12G4"}"#,
        r#"{"a" 1}"#,
        r#"{"a":1} x"#,
    ] {
        assert!(skim(data.as_bytes()).is_none(), "{data}");
        assert!(
            serde_facts(data.as_bytes()).is_none(),
            "serde accepts {data}"
        );
    }
    let mut deep = "[".repeat(100);
    deep.push_str(&"]".repeat(100));
    let data = format!(r#"{{"a":{deep},"choices":[]}}"#);
    assert!(skim(data.as_bytes()).is_none());
    assert!(skim(b"{\"a\":\"\xff\"}").is_none(), "invalid UTF-8");
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n", " \t"])
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "a",
            " tok",
            "é",
            "日本",
            "🙂",
            "\\n",
            "\\\"",
            "\\\\",
            "\\/",
            "\\u00e9",
            "\\u0041",
            "\\t",
            "\\ud83d\\ude42",
            "\\u",
            "\u{7f}",
        ]),
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "null", "true", "false", "0", "-0", "12", "1.5", "-2e-3", "1E+9", "\"s\"", "\"\"",
    ])
    .prop_map(str::to_string);
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(inner, 0..3).prop_map(|v| {
                let members: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\":{x}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn text_or_null() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text().prop_map(|t| format!("\"{t}\"")),
        1 => Just("null".to_string()),
    ]
}

fn delta() -> impl Strategy<Value = String> {
    (
        prop::option::of(text_or_null()),
        prop::option::of(text_or_null()),
        prop::option::of(text_or_null()),
        prop::option::of(value()),
        ws(),
    )
        .prop_map(|(content, reasoning_content, role, other, w)| {
            let mut m = Vec::new();
            if let Some(c) = content {
                m.push(format!("\"content\":{w}{c}"));
            }
            if let Some(c) = reasoning_content {
                m.push(format!("\"reasoning_content\":{c}"));
            }
            if let Some(r) = role {
                m.push(format!("\"role\":{r}"));
            }
            if let Some(o) = other {
                m.push(format!("\"x\":{o}"));
            }
            format!("{{{w}{}{w}}}", m.join(&format!(",{w}")))
        })
}

fn choice() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::sample::select(vec![
            "0", "1", "7", "01", "-1", "2.0", "null",
        ])),
        prop::option::of(prop_oneof![delta(), Just("null".to_string())]),
        prop::option::of(text_or_null()),
        prop::option::of(prop::sample::select(vec![
            "null",
            "\"stop\"",
            "\"length\"",
            "\"st\\u006fp\"",
            "3",
        ])),
        prop::option::of(value()),
        ws(),
    )
        .prop_map(|(index, delta, text, finish, logprobs, w)| {
            let mut m = Vec::new();
            if let Some(i) = index {
                m.push(format!("\"index\":{i}"));
            }
            if let Some(d) = delta {
                m.push(format!("\"delta\":{w}{d}"));
            }
            if let Some(t) = text {
                m.push(format!("\"text\":{t}"));
            }
            if let Some(l) = logprobs {
                m.push(format!("\"logprobs\":{l}"));
            }
            if let Some(f) = finish {
                m.push(format!("\"finish_reason\":{f}"));
            }
            format!("{{{}}}", m.join(&format!("{w},")))
        })
}

fn chunk() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::collection::vec(choice(), 0..3)),
        prop::option::of(prop::sample::select(vec!["null", "{\"prompt_tokens\":3}"])),
        prop::option::of(prop::sample::select(vec![
            "null",
            "{\"message\":\"e\"}",
            "false",
        ])),
        prop::collection::vec(value(), 0..3),
        ws(),
    )
        .prop_map(|(choices, usage, error, extra, w)| {
            let mut m = vec![format!("\"id\":{w}\"chatcmpl-1\"")];
            for (i, x) in extra.iter().enumerate() {
                m.push(format!("\"extra{i}\":{x}"));
            }
            if let Some(c) = choices {
                m.push(format!("\"choices\":[{w}{}]", c.join(",")));
            }
            if let Some(u) = usage {
                m.push(format!("\"usage\":{u}"));
            }
            if let Some(e) = error {
                m.push(format!("\"error\":{e}"));
            }
            format!("{{{w}{}}}", m.join(","))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_chunks_agree_with_serde(data in chunk()) {
        agrees(data.as_bytes());
    }

    #[test]
    fn damaged_chunks_agree_with_serde(
        data in chunk(),
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"\"\\{}[],:0a \x01\xc3".to_vec()),
        cut in any::<bool>(),
    ) {
        let mut bytes = data.into_bytes();
        let i = at.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes.insert(i, byte);
        }
        agrees(&bytes);
    }
}

#[test]
fn word_scans_find_the_first_quote_or_backslash_and_any_control_byte() {
    use super::chunk_skim::{find_quote_or_backslash, scan_bytes};
    for len in 0..80 {
        for at in 0..len {
            for mark in [b'"', b'\\'] {
                let mut bytes = vec![b'a'; len];
                bytes[at] = mark;
                if at + 1 < len {
                    bytes[at + 1..]
                        .iter_mut()
                        .step_by(3)
                        .for_each(|b| *b = b'"');
                }
                assert_eq!(find_quote_or_backslash(&bytes), Some(at), "{len} {at}");
                let mut control = vec![0xc3u8; len];
                control[at] = 0x1f;
                assert_eq!(scan_bytes(&control), (len > 1, true), "{len} {at}");
                control[at] = 0x20;
                assert_eq!(scan_bytes(&control), (len > 1, false), "{len} {at}");
                let plain = vec![b'~'; len];
                assert_eq!(scan_bytes(&plain), (false, false));
            }
        }
        assert_eq!(find_quote_or_backslash(&vec![0xffu8; len]), None);
    }
}
