//! Exact token metering through the proxy: usage injected and stripped, truncation made
//! visible, upstream cancelled when the client leaves. Ground truth is the simulator's record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

const SERVED: &str = "served";

fn setup(sim_args: &[&str]) -> (Sim, Proxy) {
    let mut args = vec!["--served-model-name", SERVED];
    args.extend_from_slice(sim_args);
    let sim = Sim::start(&args);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[sim.addr])
            .model("m", "pool", SERVED),
    );
    (sim, proxy)
}

async fn tokens(proxy: &Proxy, kind: &str) -> f64 {
    metric_sum(
        proxy,
        "tokengate_tokens_total",
        &[("model", "m"), ("kind", kind)],
    )
    .await
}

/// Wait until the proxy has logged (settled) `n` requests in its metrics.
async fn settled(proxy: &Proxy, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(proxy, "tokengate_requests_total", &[("model", "m")]).await < n {
        assert!(Instant::now() < deadline, "requests not settled in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn usage_chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v["choices"].as_array().is_some_and(|c| c.is_empty()))
        .collect()
}

#[tokio::test]
async fn injected_usage_is_stripped_and_metered_exactly() {
    let (sim, proxy) = setup(&[]);
    let url = proxy.url("/v1/chat/completions");
    for body in [
        r#"{"messages":[{"role":"user","content":"one two three"}],"stream":true,"max_tokens":7,"model":"m"}"#,
        // `{}` means "no usage" in OpenAI terms, even though vLLM would send it.
        r#"{"messages":[{"role":"user","content":"one two three"}],"stream":true,"stream_options":{},"max_tokens":7,"model":"m"}"#,
    ] {
        let (status, text) = stream_text(&url, body, &[]).await;
        assert_eq!(status, 200);
        let events = sse_events(&text);
        assert!(usage_chunks(&events).is_empty(), "no usage chunk: {text}");
        assert!(!text.contains("\"usage\""), "{text}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    let recorded = sim.requests().await;
    assert!(
        recorded.iter().all(|r| r["include_usage"] == true),
        "the replica was asked for usage: {recorded:?}"
    );
    settled(&proxy, 2.0).await;
    let want_prompt: u64 = recorded
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap())
        .sum();
    let want_completion: u64 = recorded
        .iter()
        .map(|r| r["completion_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(want_completion, 14);
    assert_eq!(tokens(&proxy, "prompt").await as u64, want_prompt);
    assert_eq!(tokens(&proxy, "completion").await as u64, want_completion);
    assert_eq!(
        metric_sum(
            &proxy,
            "tokengate_tokens_total",
            &[("source", "upstream_usage")]
        )
        .await as u64,
        want_prompt + want_completion
    );
}

#[tokio::test]
async fn requested_usage_passes_through_once() {
    let (sim, proxy) = setup(&[]);
    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"n":2,"max_tokens":5,"messages":[{"role":"user","content":"hello"}]}"#;
    let (status, text) = stream_text(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);
    let chunks = usage_chunks(&sse_events(&text));
    assert_eq!(chunks.len(), 1, "{text}");
    let truth = &sim.requests().await[0];
    assert_eq!(
        chunks[0]["usage"]["completion_tokens"],
        truth["completion_tokens"]
    );
    assert_eq!(truth["completion_tokens"], 10, "n=2 choices of 5");
    settled(&proxy, 1.0).await;
    assert_eq!(tokens(&proxy, "completion").await, 10.0);
}

#[tokio::test]
async fn non_streaming_and_embeddings_are_metered() {
    let (sim, proxy) = setup(&[]);
    let (status, _, body) = post(
        &proxy.url("/v1/completions"),
        br#"{"model":"m","prompt":"a b c d","max_tokens":9}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let input: Vec<String> = (0..2000).map(|i| format!("text number {i}")).collect();
    let embed = serde_json::json!({"input": input, "model": "m"});
    let (status, _, body) =
        post(&proxy.url("/v1/embeddings"), embed.to_string().into_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2000);
    settled(&proxy, 2.0).await;
    let recorded = sim.requests().await;
    let want_prompt: u64 = recorded
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens(&proxy, "prompt").await as u64, want_prompt);
    assert_eq!(tokens(&proxy, "completion").await, 9.0);
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_is_recorded_truncated() {
    let (_sim, proxy) = setup(&["--cut-after-tokens", "3"]);
    let body =
        r#"{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"x"}]}"#;
    let (status, text) = stream_text(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);
    let events = sse_events(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).expect("last event is JSON");
    assert_eq!(last["error"]["code"], "stream_truncated", "{text}");
    assert!(!text.contains("[DONE]"));
    settled(&proxy, 1.0).await;
    assert_eq!(
        metric_sum(
            &proxy,
            "tokengate_truncated_streams_total",
            &[("model", "m")]
        )
        .await,
        1.0
    );
    assert!(
        metric_sum(&proxy, "tokengate_tokens_total", &[("source", "estimated")]).await >= 3.0,
        "a cut stream is still charged what was seen"
    );
}

#[tokio::test]
async fn midstream_error_events_are_normalised() {
    let (_sim, proxy) = setup(&["--midstream-error-after", "2"]);
    let body = r#"{"model":"m","stream":true,"max_tokens":10,"messages":[]}"#;
    let (_, text) = stream_text(&proxy.url("/v1/chat/completions"), body, &[]).await;
    let events = sse_events(&text);
    let error: Value = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|v| v.get("error").is_some())
        .expect("an error event");
    let e = assert_openai_error(&error);
    // vLLM sends an integer code; clients get a string (issue #13).
    assert!(e["code"].is_string(), "{error}");
    assert!(!e.as_object().unwrap().contains_key("object"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // Logged with the error and counted, though the status was 200.
    let line = eventually(Duration::from_secs(5), "the access log line", || async {
        proxy.access_log().pop()
    })
    .await
    .0;
    assert_eq!(line["error"], e["code"], "{line}");
    let labels = [("kind", "stream_error")];
    let counted = metric_sum(&proxy, "tokengate_upstream_errors_total", &labels).await;
    assert_eq!(counted, 1.0);
}

/// Tests with wall-clock bounds: run alone and one at a time (see tests/common: `serial`).
mod timing {
    use super::*;

    #[tokio::test]
    async fn client_disconnect_cancels_the_upstream_within_a_second() {
        let _serial = serial().await;
        let (sim, proxy) = setup(&["--itl-ms", "20"]);
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"max_tokens":200,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut seen = String::new();
        while seen.matches("\"content\":\" ").count() < 5 {
            let piece = body.next().await.expect("open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&piece));
        }
        drop(body);
        let left_at = Instant::now();
        loop {
            let stats = sim.stats().await;
            if stats["abandoned_total"] == 1 {
                break;
            }
            assert!(
                left_at.elapsed() < Duration::from_secs(1),
                "replica still generating 1 s after the client left: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = &sim.requests().await[0];
        assert!(record["completion_tokens"].as_u64().unwrap() < 200);
    }
}
