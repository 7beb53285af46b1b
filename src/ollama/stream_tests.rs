use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn fixed() -> (Started, Clock) {
    let start = Instant::now();
    let started = Started {
        request: start,
        upstream: start + Duration::from_millis(1),
    };
    let clock = Clock {
        now: start + Duration::from_millis(5),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
    };
    (started, clock)
}

/// The whole stream in `pieces`, with one clock (so output is comparable across splits).
fn translate(api: Api, pieces: &[&[u8]]) -> Vec<u8> {
    let (started, clock) = fixed();
    let mut s = NdjsonStream::new(api, "llama", started);
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&s.feed(p, clock));
    }
    out.extend_from_slice(&s.finish(clock));
    out
}

fn lines(out: &[u8]) -> Vec<Value> {
    std::str::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).unwrap()
}

const CHAT: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\xc3\xa9\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";

#[test]
fn chat_stream_becomes_ndjson_with_a_done_line() {
    let out = lines(&translate(Api::Chat, &[CHAT]));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0]["model"], "llama");
    assert_eq!(out[0]["message"]["content"], "Hel");
    assert_eq!(out[0]["message"]["role"], "assistant");
    assert_eq!(out[0]["done"], false);
    assert_eq!(out[1]["message"]["content"], "lo éé");
    let last = &out[2];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["prompt_eval_count"], 7);
    assert_eq!(last["eval_count"], 2);
    assert_eq!(last["total_duration"], 5_000_000);
    assert_eq!(last["prompt_eval_duration"], 4_000_000);
    assert_eq!(last["eval_duration"], 0);
    assert_eq!(last["created_at"], "2026-01-01T00:00:00.000000000Z");
}

#[test]
fn completion_stream_becomes_generate_lines() {
    let out = lines(&translate(
        Api::Generate,
        &[&corpus("openai-completion-stream-include-usage.sse")],
    ));
    let last = out.last().unwrap();
    assert_eq!(last["done"], true, "{out:?}");
    assert_eq!(last["response"], "");
    assert!(last["eval_count"].as_u64().unwrap() > 0);
    let text: String = out.iter().filter_map(|l| l["response"].as_str()).collect();
    assert!(!text.is_empty());
    assert!(out.iter().all(|l| l.get("message").is_none()));
}

#[test]
fn tool_call_arguments_are_assembled_into_one_message() {
    let out = lines(&translate(
        Api::Chat,
        &[&corpus(
            "vllm-0.6-chat-stream-toolcalls-continuous-usage.sse",
        )],
    ));
    let calls: Vec<&Value> = out
        .iter()
        .filter_map(|l| l["message"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(!calls.is_empty(), "{out:?}");
    for call in calls {
        assert!(call["function"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()));
        assert!(call["function"]["arguments"].is_object(), "{call}");
    }
    assert_eq!(out.last().unwrap()["done"], true);
}

#[test]
fn cut_and_errored_streams_end_with_one_error_line() {
    let cut = &CHAT[..CHAT.len() - 40];
    let out = lines(&translate(Api::Chat, &[cut]));
    assert_eq!(out.last().unwrap()["error"], CUT_MESSAGE);
    assert!(out.iter().all(|l| l["done"] != true));

    let errored = corpus("DERIVED-vllm-midstream-error-v0.10.1plus.sse");
    let out = lines(&translate(Api::Chat, &[&errored]));
    let errors: Vec<_> = out.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(errors[0]["error"].as_str().unwrap().len() > 3);
    assert!(out.last().unwrap().get("error").is_some());

    // The gateway's own truncation event (appended by the meter) becomes the error line.
    let mut tail = cut.to_vec();
    tail.extend_from_slice(b"\n\n");
    tail.extend_from_slice(&crate::metering::truncation_error_event(
        crate::metering::StreamProtocol::OpenAi,
    ));
    let out = lines(&translate(Api::Chat, &[&tail]));
    assert_eq!(
        out.last().unwrap()["error"],
        crate::metering::TRUNCATION_MESSAGE
    );
}

#[test]
fn a_corpus_vllm_chat_stream_translates() {
    let out = lines(&translate(
        Api::Chat,
        &[&corpus("openai-chat-stream-multibyte.sse")],
    ));
    let text: String = out
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert_eq!(out.last().unwrap()["done"], true, "{out:?}");
}

#[test]
fn every_two_way_split_gives_identical_ndjson() {
    for (api, stream) in [
        (Api::Chat, CHAT.to_vec()),
        (
            Api::Chat,
            corpus("vllm-0.6-chat-stream-toolcalls-continuous-usage.sse"),
        ),
        (
            Api::Generate,
            corpus("vllm-completions-stream-usage-chunks.txt"),
        ),
        (Api::Chat, CHAT[..CHAT.len() - 40].to_vec()),
    ] {
        let whole = translate(api, &[&stream]);
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(translate(api, &[a, b]), whole, "split at {at}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_identical_ndjson(cuts in proptest::collection::vec(0..CHAT.len(), 0..12)) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts {
            pieces.push(&CHAT[from..c]);
            from = c;
        }
        pieces.push(&CHAT[from..]);
        prop_assert_eq!(translate(Api::Chat, &pieces), translate(Api::Chat, &[CHAT]));
    }
}

#[test]
fn reasoning_deltas_become_thinking_and_empty_deltas_send_nothing() {
    let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":\"\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";
    let out = lines(&translate(Api::Chat, &[stream]));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0]["message"]["thinking"], "hmm");
    assert_eq!(out[0]["message"]["content"], "");
    assert!(out[1]["message"].get("thinking").is_none());
    assert_eq!(out[2]["done_reason"], "stop");
    assert_eq!(out[2]["eval_count"], 0, "no usage chunk: nothing invented");
}

#[test]
fn tool_calls_beyond_the_cap_end_the_stream_with_an_error() {
    let (started, clock) = fixed();
    let mut s = NdjsonStream::new(Api::Chat, "m", started);
    let piece = "x".repeat(64 * 1024);
    let mut out = Vec::new();
    for _ in 0..(MAX_TOOL_CALL_BYTES / piece.len() + 2) {
        let event = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{piece}\"}}}}]}}}}]}}\n\n"
        );
        out.extend_from_slice(&s.feed(event.as_bytes(), clock));
        assert!(s.carried_bytes() <= MAX_TOOL_CALL_BYTES + 2 * piece.len());
    }
    out.extend_from_slice(&s.feed(b"data: [DONE]\n\n", clock));
    out.extend_from_slice(&s.finish(clock));
    let out = lines(&out);
    assert_eq!(out.len(), 1, "one error line, nothing after it");
    assert!(out[0]["error"].as_str().unwrap().contains("too large"));
}
