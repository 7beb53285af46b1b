//! Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`) through the real proxy and
//! simulator: byte-exact alias rewrite with no `stream_options` injected, streams passed
//! through unchanged and metered from `message_start` / `message_delta`, the cut-stream and
//! error-event cases, Anthropic-shaped errors, `max_tokens` reserved in the buckets, and the
//! per-flavour capability (trtllm serves no Messages).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SERVED: &str = "org/served-model";

fn setup() -> (Sim, Sim, Proxy) {
    let vllm = Sim::start(&["--served-model-name", SERVED]);
    let trt = Sim::start(&["--flavour", "trtllm", "--served-model-name", SERVED]);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[vllm.addr])
            .cluster("trt", "trtllm", &[trt.addr])
            .model("claude-local", "pool", SERVED)
            .model("trt-model", "trt", SERVED)
            .table(
                "[[models]]\nalias = \"capped\"\ncluster = \"pool\"\nserved_name = \"org/served-model\"\n\
                 limits = { tokens_per_minute = 200 }",
            ),
    );
    (vllm, trt, proxy)
}

/// Asserts `{"type":"error","error":{"type":kind,"message":str}}` and returns the message.
fn assert_anthropic_error(body: &Value, kind: &str) -> String {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_string()
}

async fn last_log_line(proxy: &Proxy, count: usize) -> Value {
    eventually(Duration::from_secs(5), "the access log line", || async {
        let lines = proxy.access_log();
        (lines.len() >= count).then(|| lines[count - 1].clone())
    })
    .await
    .0
}

/// `(event type, data)` of each SSE event.
fn typed_events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut kind = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_string();
                }
            }
            (kind, data)
        })
        .collect()
}

#[tokio::test]
async fn messages_are_rewritten_byte_exact_and_metered() {
    let (vllm, _trt, proxy) = setup();
    // The alias last and escaped, as a client may send it; `system` and a spacing the scanner
    // must keep.
    let body = r#"{"max_tokens": 6, "system":"be brief","messages":[{"role":"user","content":"hi there"}],  "model":"claude\u002dlocal"}"#;
    let (status, headers, reply) = post(&proxy.url("/v1/messages"), body.into()).await;
    assert_eq!(status, 200, "{reply}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(reply["type"], "message");
    assert_eq!(reply["stop_reason"], "max_tokens");
    assert_eq!(reply["usage"]["output_tokens"], 6);
    let input = reply["usage"]["input_tokens"].as_u64().unwrap();
    let recorded = vllm.requests().await;
    let sent = recorded[0]["body"].as_str().expect("recorded body");
    assert_eq!(
        sent,
        body.replace(r#""claude\u002dlocal""#, &format!("\"{SERVED}\"")),
        "only the model string changes"
    );
    assert_eq!(recorded[0]["path"], "/v1/messages");
    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert_eq!(line["prompt_tokens"], input);
    assert_eq!(line["completion_tokens"], 6);
    assert_eq!(line["usage_source"], "upstream_usage");

    // count_tokens: routed and rewritten the same way; counts nothing.
    let body = r#"{"model":"claude-local","messages":[{"role":"user","content":"hi there"}]}"#;
    let (status, _, reply) = post(&proxy.url("/v1/messages/count_tokens"), body.into()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["input_tokens"],
        input - 2,
        "the system prompt's two words"
    );
    let recorded = vllm.requests().await;
    assert_eq!(recorded[1]["path"], "/v1/messages/count_tokens");
    assert!(recorded[1]["body"].as_str().unwrap().contains(SERVED));
    let line = last_log_line(&proxy, 2).await;
    assert_eq!(line["endpoint"], "count_tokens");
    assert_eq!(line["completion_tokens"], 0);
}

#[tokio::test]
async fn streams_pass_unchanged_without_injected_stream_options() {
    let (vllm, _trt, proxy) = setup();
    let body = json!({"model": "claude-local", "max_tokens": 5, "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"}})
    .to_string();
    let (status, via_proxy) = stream_text(&proxy.url("/v1/messages"), &body, &[]).await;
    assert_eq!(status, 200);
    let sent = vllm.requests().await[0]["body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!sent.contains("stream_options"), "{sent}");
    // The same request straight to the replica: every event after `message_start` and the
    // tool block's start (their ids carry the request id) is byte-identical.
    let direct_body = body.replace("claude-local", SERVED);
    let (_, direct) = stream_text(&vllm.url("/v1/messages"), &direct_body, &[]).await;
    let (a, b) = (typed_events(&via_proxy), typed_events(&direct));
    assert_eq!(a.len(), b.len());
    assert_eq!(a[1].0, "content_block_start");
    assert_eq!(a[2..], b[2..], "events relayed unchanged");
    let json_deltas: Vec<&(String, String)> = a
        .iter()
        .filter(|(_, d)| d.contains("input_json_delta"))
        .collect();
    assert_eq!(json_deltas.len(), 7, "opening + 5 tokens + closing");
    assert_eq!(a.last().unwrap().0, "message_stop");
    assert!(!via_proxy.contains("[DONE]"));
    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["completion_tokens"], 5);
    assert_eq!(line["truncated"], false);
    assert_eq!(line["stream"], true);
}

#[tokio::test]
async fn cut_streams_end_with_an_anthropic_error_event_and_mid_stream_errors_pass() {
    let (vllm, _trt, proxy) = setup();
    let body = r#"{"model":"claude-local","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    vllm.set_faults(json!({"cut_after_tokens": 3})).await;
    let (status, text) = stream_text(&proxy.url("/v1/messages"), body, &[]).await;
    assert_eq!(status, 200);
    let events = typed_events(&text);
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "error", "{text}");
    let error: Value = serde_json::from_str(data).unwrap();
    assert!(assert_anthropic_error(&error, "api_error").contains("truncated"));
    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["truncated"], true, "{line}");
    assert_eq!(line["usage_source"], "estimated");
    assert!(line["completion_tokens"].as_u64().unwrap() >= 3);

    vllm.set_faults(json!({"cut_after_tokens": null, "midstream_error_after": 2}))
        .await;
    let (_, text) = stream_text(&proxy.url("/v1/messages"), body, &[]).await;
    let events = typed_events(&text);
    let errors: Vec<_> = events.iter().filter(|(k, _)| k == "error").collect();
    assert_eq!(
        errors.len(),
        1,
        "the replica's error, and no second one: {text}"
    );
    let error: Value = serde_json::from_str(&errors[0].1).unwrap();
    assert_anthropic_error(&error, "internal_error");
    let line = last_log_line(&proxy, 2).await;
    assert_eq!(line["error"], "internal_error", "{line}");
    assert_eq!(line["truncated"], false);
}

#[tokio::test]
async fn errors_have_anthropic_shape_and_status() {
    let (vllm, trt, proxy) = setup();
    let url = proxy.url("/v1/messages");
    let msg = |model: &str, extra: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"x"}}]{extra}}}"#)
    };

    let (status, _, body) = post(&url, msg("nope", r#","max_tokens":5"#).into_bytes()).await;
    assert_eq!(status, 404);
    assert!(assert_anthropic_error(&body, "not_found_error").contains("`nope`"));

    let (status, _, body) = post(&url, msg("claude-local", "").into_bytes()).await;
    assert_eq!(status, 400);
    assert!(assert_anthropic_error(&body, "invalid_request_error").contains("max_tokens"));

    let (status, _, body) = post(&url, b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert_anthropic_error(&body, "invalid_request_error");

    let (status, _, body) = post(
        &url,
        msg("claude-local", r#","max_tokens":"5""#).into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "strict types, as on chat completions");
    assert_anthropic_error(&body, "invalid_request_error");

    // A cluster whose servers have no Messages API: a clear answer, not a replica's 404.
    let (status, _, body) = post(&url, msg("trt-model", r#","max_tokens":5"#).into_bytes()).await;
    assert_eq!(status, 404);
    let message = assert_anthropic_error(&body, "not_found_error");
    assert!(
        message.contains("`trt-model`") && message.contains("/v1/messages"),
        "{message}"
    );
    assert!(trt.requests().await.is_empty(), "never sent to trtllm");

    // The replica's own error keeps its message; vLLM's class-name type becomes Anthropic's.
    let (status, _, body) =
        post(&url, msg("claude-local", r#","max_tokens":0"#).into_bytes()).await;
    assert_eq!(status, 400);
    let message = assert_anthropic_error(&body, "invalid_request_error");
    assert!(
        message.contains("max_tokens must be at least 1"),
        "{message}"
    );

    // A replica 503 (every retry spent) reaches the client as overloaded_error + retry-after.
    vllm.set_faults(json!({"error_status": 503})).await;
    let (status, headers, body) =
        post(&url, msg("claude-local", r#","max_tokens":5"#).into_bytes()).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_anthropic_error(&body, "overloaded_error");

    // `max_tokens` is reserved in the buckets: 500 can never fit a 200-token minute.
    vllm.set_faults(json!({"error_status": null})).await;
    let (status, headers, body) =
        post(&url, msg("capped", r#","max_tokens":500"#).into_bytes()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers["x-should-retry"], "false", "no wait can help");
    assert_anthropic_error(&body, "rate_limit_error");
    let (status, _, _) = post(&url, msg("capped", r#","max_tokens":5"#).into_bytes()).await;
    assert_eq!(status, 200);

    // Chat completions keep the OpenAI shape.
    let (status, _, body) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"nope","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    assert_openai_error(&body);
}
