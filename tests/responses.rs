//! OpenAI Responses API (`/v1/responses` and its stored-response routes) through the real
//! proxy and simulator: byte-exact alias rewrite, streams passed through and metered from
//! `response.completed`, stored responses routed to the replica that created them (among
//! two), `previous_response_id` affinity, per-key ids, the cut-stream error event, and the
//! per-cluster surfaces (trtllm and `serves` without `responses` → `endpoint_not_served`).

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
use tokengate::auth::{now_unix, KeyRegistry, NewKey};
use tokengate::ratelimit::KeyLimits;

const SERVED: &str = "org/served-model";

struct Setup {
    a: Sim,
    b: Sim,
    _trt: Sim,
    proxy: Proxy,
    alice: String,
    bob: String,
    /// Two requests a minute.
    carol: String,
    _keys: tempfile::TempDir,
}

fn setup() -> Setup {
    let a = Sim::start(&["--served-model-name", SERVED]);
    let b = Sim::start(&["--served-model-name", SERVED]);
    let trt = Sim::start(&["--flavour", "trtllm", "--served-model-name", SERVED]);
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("keys.toml");
    let registry = KeyRegistry::load_or_empty(&path).unwrap();
    let (alice, _) = registry.create(NewKey::named("alice"), now_unix()).unwrap();
    let (bob, _) = registry.create(NewKey::named("bob"), now_unix()).unwrap();
    let limited = NewKey {
        limits: KeyLimits {
            requests_per_minute: Some(2),
            ..KeyLimits::default()
        },
        ..NewKey::named("carol")
    };
    let (carol, _) = registry.create(limited, now_unix()).unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[a.addr, b.addr])
            .with(&["policy = \"round-robin\""])
            .cluster("trt", "trtllm", &[trt.addr])
            .cluster("chat-only", "vllm", &[a.addr])
            .with(&["serves = [\"chat\", \"completions\"]"])
            .model("m", "pool", SERVED)
            .model("trt-model", "trt", SERVED)
            .model("chat-model", "chat-only", SERVED)
            .table(&format!("[auth]\nkeys_file = \"{}\"", path.display())),
    );
    Setup {
        a,
        b,
        _trt: trt,
        proxy,
        alice,
        bob,
        carol,
        _keys: keys,
    }
}

async fn send(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().request(method, url).bearer_auth(key);
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn replica_of(headers: &reqwest::header::HeaderMap) -> String {
    headers["x-sim-replica"].to_str().unwrap().to_string()
}

async fn log_line(proxy: &Proxy, count: usize) -> Value {
    eventually(Duration::from_secs(5), "the access log line", || async {
        let lines = proxy.access_log();
        (lines.len() >= count).then(|| lines[count - 1].clone())
    })
    .await
    .0
}

/// `(event type, data)` of each SSE event.
fn typed_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap_or(Value::Null);
                }
            }
            (kind, data)
        })
        .collect()
}

#[tokio::test]
async fn responses_are_rewritten_byte_exact_and_metered() {
    let s = setup();
    let url = s.proxy.url("/v1/responses");
    let body = r#"{"input": "hello there friend", "max_output_tokens": 5,  "model":"m"}"#;
    let (status, _, reply) = send(reqwest::Method::POST, &url, &s.alice, Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "response");
    assert_eq!(reply["usage"]["output_tokens"], 5);
    let input = reply["usage"]["input_tokens"].as_u64().unwrap();
    let mut recorded = s.a.requests().await;
    recorded.extend(s.b.requests().await);
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0]["body"].as_str().unwrap(),
        body.replace(r#""m""#, &format!("\"{SERVED}\"")),
        "only the model string changes"
    );
    let line = log_line(&s.proxy, 1).await;
    assert_eq!(line["endpoint"], "responses", "{line}");
    assert_eq!(line["prompt_tokens"], input);
    assert_eq!(line["completion_tokens"], 5);
    assert_eq!(line["usage_source"], "upstream_usage");

    // Streamed: the events pass unchanged; usage from `response.completed`.
    let body = r#"{"model":"m","input":"hello there friend","max_output_tokens":4,"stream":true}"#;
    let auth = format!("Bearer {}", s.alice);
    let (status, text) = stream_text(&url, body, &[("authorization", auth.as_str())]).await;
    assert_eq!(status, 200, "{text}");
    let events = typed_events(&text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let usage = &events.last().unwrap().1["response"]["usage"];
    let line = log_line(&s.proxy, 2).await;
    assert_eq!(line["endpoint"], "responses");
    assert_eq!(line["stream"], true);
    assert_eq!(line["prompt_tokens"], usage["input_tokens"]);
    assert_eq!(line["completion_tokens"], usage["output_tokens"]);
    assert_eq!(line["truncated"], false);
    let usage_totals = get_json(s.proxy.admin_request(reqwest::Method::GET, "/admin/usage")).await;
    assert_eq!(
        usage_totals["endpoints"]["responses"]["completion_tokens"], 9,
        "{usage_totals}"
    );
}

#[tokio::test]
async fn stored_responses_are_routed_to_the_replica_that_created_them() {
    let s = setup();
    let url = s.proxy.url("/v1/responses");
    let post = reqwest::Method::POST;
    let mut created = Vec::new();
    for i in 0..4 {
        let stream = i % 2 == 1;
        let body =
            format!(r#"{{"model":"m","input":"hi","max_output_tokens":3,"stream":{stream}}}"#);
        let id = if stream {
            let auth = format!("Bearer {}", s.alice);
            let (_, text) = stream_text(&url, &body, &[("authorization", auth.as_str())]).await;
            let events = typed_events(&text);
            events[0].1["response"]["id"].as_str().unwrap().to_string()
        } else {
            let (status, _, reply) = send(post.clone(), &url, &s.alice, Some(&body)).await;
            assert_eq!(status, 200, "{reply}");
            reply["id"].as_str().unwrap().to_string()
        };
        created.push(id);
    }
    let (a, b) = (s.a.requests().await.len(), s.b.requests().await.len());
    assert_eq!(
        (a, b),
        (2, 2),
        "round-robin spread the creates over both replicas"
    );
    let mut replicas = std::collections::HashSet::new();
    for id in &created {
        let get = s.proxy.url(&format!("/v1/responses/{id}"));
        let (status, headers, reply) = send(reqwest::Method::GET, &get, &s.alice, None).await;
        assert_eq!(status, 200, "GET {id}: {reply}");
        assert_eq!(reply["id"], id.as_str());
        replicas.insert(replica_of(&headers));
        // Another key's id is answered exactly like an unknown one.
        let (status, _, reply) = send(reqwest::Method::GET, &get, &s.bob, None).await;
        assert_eq!(status, 404);
        assert_eq!(assert_openai_error(&reply)["code"], "response_not_found");
    }
    assert_eq!(replicas.len(), 2, "both replicas answered their own ids");

    // A follow-up goes to the replica holding the previous response.
    for id in &created {
        let (_, headers, _) = send(
            reqwest::Method::GET,
            &s.proxy.url(&format!("/v1/responses/{id}")),
            &s.alice,
            None,
        )
        .await;
        let holder = replica_of(&headers);
        let body = format!(r#"{{"model":"m","input":"and then?","previous_response_id":"{id}"}}"#);
        let (status, headers, reply) = send(post.clone(), &url, &s.alice, Some(&body)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(replica_of(&headers), holder, "follow-up of {id}");
        assert_eq!(reply["previous_response_id"], id.as_str());
    }
    let body = r#"{"model":"m","input":"x","previous_response_id":"resp_unknown"}"#;
    let (status, _, reply) = send(post.clone(), &url, &s.alice, Some(body)).await;
    assert_eq!(status, 404);
    let e = assert_openai_error(&reply);
    assert_eq!(e["code"], "previous_response_not_found");
    assert_eq!(e["param"], "previous_response_id");

    // Cancel and delete reach the same replica (another would answer 404); a deleted id is
    // forgotten. A finished synchronous response cannot be cancelled: vLLM's 400.
    let id = &created[0];
    let cancel = s.proxy.url(&format!("/v1/responses/{id}/cancel"));
    let (status, _, reply) = send(post.clone(), &cancel, &s.alice, None).await;
    assert_eq!(status, 400, "{reply}");
    assert!(assert_openai_error(&reply)["message"]
        .as_str()
        .unwrap()
        .contains("Cannot cancel a synchronous response."));
    let one = s.proxy.url(&format!("/v1/responses/{id}"));
    let (status, _, reply) = send(reqwest::Method::DELETE, &one, &s.alice, None).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["deleted"], true);
    let (status, _, reply) = send(reqwest::Method::GET, &one, &s.alice, None).await;
    assert_eq!(status, 404);
    assert_eq!(assert_openai_error(&reply)["code"], "response_not_found");
    let unknown = s.proxy.url("/v1/responses/resp_nope");
    let (status, _, reply) = send(reqwest::Method::GET, &unknown, &s.alice, None).await;
    assert_eq!(status, 404);
    assert_eq!(assert_openai_error(&reply)["param"], "response_id");
    let line = log_line(&s.proxy, 1).await;
    assert!(line["endpoint"].is_string());

    // The stored-response routes count against the key's requests per minute.
    let body = r#"{"model":"m","input":"hi","max_output_tokens":2}"#;
    let (status, _, reply) = send(post.clone(), &url, &s.carol, Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    let get = s
        .proxy
        .url(&format!("/v1/responses/{}", reply["id"].as_str().unwrap()));
    let (status, _, _) = send(reqwest::Method::GET, &get, &s.carol, None).await;
    assert_eq!(status, 200);
    let (status, headers, reply) = send(reqwest::Method::GET, &get, &s.carol, None).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(assert_openai_error(&reply)["code"], "rate_limit_exceeded");
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_a_truncated_record() {
    let s = setup();
    s.a.set_faults(json!({"cut_after_tokens": 2})).await;
    s.b.set_faults(json!({"cut_after_tokens": 2})).await;
    let url = s.proxy.url("/v1/responses");
    let body = r#"{"model":"m","input":"hi","max_output_tokens":6,"stream":true}"#;
    let auth = format!("Bearer {}", s.alice);
    let (status, text) = stream_text(&url, body, &[("authorization", auth.as_str())]).await;
    assert_eq!(status, 200);
    let events = typed_events(&text);
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "error", "{text}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["code"], "stream_truncated");
    assert_eq!(data["error"]["code"], "stream_truncated");
    let line = log_line(&s.proxy, 1).await;
    assert_eq!(line["truncated"], true, "{line}");
    assert_eq!(line["endpoint"], "responses");

    // vLLM's generation error: its own `error` event passes; the record is not truncated.
    s.a.set_faults(json!({"cut_after_tokens": null, "midstream_error_after": 1}))
        .await;
    s.b.set_faults(json!({"cut_after_tokens": null, "midstream_error_after": 1}))
        .await;
    let (_, text) = stream_text(&url, body, &[("authorization", auth.as_str())]).await;
    let events = typed_events(&text);
    assert_eq!(
        events.iter().filter(|(k, _)| k == "error").count(),
        1,
        "{text}"
    );
    let line = log_line(&s.proxy, 2).await;
    assert_eq!(line["truncated"], false, "{line}");
}

#[tokio::test]
async fn clusters_without_the_surface_answer_endpoint_not_served() {
    let s = setup();
    let url = s.proxy.url("/v1/responses");
    for model in ["trt-model", "chat-model"] {
        let body = format!(r#"{{"model":"{model}","input":"hi"}}"#);
        let (status, _, reply) = send(reqwest::Method::POST, &url, &s.alice, Some(&body)).await;
        assert_eq!(status, 404, "{model}: {reply}");
        let e = assert_openai_error(&reply);
        assert_eq!(e["code"], "endpoint_not_served");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(model) && message.contains("/v1/responses"),
            "{message}"
        );
    }
    // chat still works on the chat-only cluster.
    let body = r#"{"model":"chat-model","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, _) = send(
        reqwest::Method::POST,
        &s.proxy.url("/v1/chat/completions"),
        &s.alice,
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    // No key: 401 before anything else.
    let (status, _, _) = post(&url, br#"{"model":"m","input":"hi"}"#.to_vec()).await;
    assert_eq!(status, 401);
}

/// The simulator's own Responses stream (as vLLM emits it), metered split at every byte:
/// identical records, equal to its `response.completed` usage, and passed unchanged.
#[tokio::test]
async fn the_simulators_stream_meters_identically_at_every_split() {
    use std::time::Instant;
    use tokengate::metering::{BodyAction, MeterConfig, ResponseMeter};
    let sim = Sim::start(&["--served-model-name", SERVED, "--seed", "3"]);
    let body = format!(
        r#"{{"model":"{SERVED}","input":"a prompt of some words","max_output_tokens":7,"stream":true}}"#
    );
    let (status, text) = stream_text(&sim.url("/v1/responses"), &body, &[]).await;
    assert_eq!(status, 200);
    let usage = typed_events(&text).last().unwrap().1["response"]["usage"].clone();
    let bytes = text.as_bytes();
    let meter_at = |cut: usize| {
        let now = Instant::now();
        let mut meter = ResponseMeter::new(MeterConfig::responses_sse(), now);
        for piece in [&bytes[..cut], &bytes[cut..]] {
            assert_eq!(meter.on_body(piece, now), BodyAction::Passthrough);
        }
        assert!(
            meter.on_end(now).is_none(),
            "a whole stream gets nothing appended"
        );
        let id = meter.response_id().map(str::to_string);
        let mut record = meter.finish(now);
        record.ttft = None;
        record.inter_token = Default::default();
        (record, id)
    };
    let (whole, id) = meter_at(bytes.len());
    assert!(id.unwrap().starts_with("resp_"));
    assert_eq!(whole.prompt_tokens, usage["input_tokens"].as_u64().unwrap());
    assert_eq!(whole.completion_tokens, 7);
    assert_eq!(whole.content_deltas, 7);
    assert!(!whole.truncated && whole.upstream_error.is_none());
    for cut in 0..=bytes.len() {
        assert_eq!(meter_at(cut).0, whole, "split at {cut}");
    }
}
