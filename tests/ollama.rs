//! Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/version`)
//! through the real proxy and simulator: translated to the replica's chat/completions with
//! the served name, NDJSON streamed back line by line, tokens metered from the replica's usage
//! (equal to `eval_count`), a cut stream ending in an `{"error":…}` line with a truncated
//! record, and Ollama-shaped errors with the right statuses.

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

fn setup() -> (Sim, Proxy) {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED).model("other", "pool", SERVED));
    (sim, proxy)
}

async fn last_log_line(proxy: &Proxy, count: usize) -> Value {
    eventually(Duration::from_secs(5), "the access log line", || async {
        let lines = proxy.access_log();
        (lines.len() >= count).then(|| lines[count - 1].clone())
    })
    .await
    .0
}

/// The NDJSON lines of a body, each parsed.
fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// `{"error": "..."}` and nothing else; returns the message.
fn ollama_error(body: &Value) -> String {
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    body["error"].as_str().expect("error string").to_string()
}

async fn send(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().request(method, url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn chat_streams_ndjson_and_is_metered_from_the_replica_usage() {
    let (sim, proxy) = setup();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],
        "options":{"num_predict":6,"temperature":0.2,"top_k":3,"seed":1}}"#;
    let r = client()
        .post(proxy.url("/api/chat"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&r.text().await.unwrap());
    assert!(lines.len() >= 3, "{lines:?}");
    let (last, content) = lines.split_last().unwrap();
    for line in content {
        assert_eq!(line["model"], "m", "the alias, never the served name");
        assert_eq!(line["done"], false);
        assert_eq!(line["message"]["role"], "assistant");
        assert!(line["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let text: String = content
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert!(!text.trim().is_empty());
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 6);
    let prompt = last["prompt_eval_count"].as_u64().unwrap();
    assert!(prompt > 0);
    let total = last["total_duration"].as_u64().unwrap();
    assert!(total > 0 && total >= last["eval_duration"].as_u64().unwrap());

    let recorded = sim.requests().await;
    assert_eq!(recorded[0]["path"], "/v1/chat/completions");
    let sent: Value = serde_json::from_str(recorded[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], SERVED);
    assert_eq!(sent["stream"], true, "Ollama streams by default");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["max_tokens"], 6);
    assert_eq!(sent["top_k"], 3);
    assert_eq!(sent["messages"][0]["content"], "hello there");

    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["endpoint"], "ollama_chat", "{line}");
    assert_eq!(line["completion_tokens"], 6, "metered = eval_count");
    assert_eq!(line["prompt_tokens"], prompt, "metered = prompt_eval_count");
    assert_eq!(line["usage_source"], "upstream_usage");
    assert_eq!(line["truncated"], false);
    assert_eq!(line["stream"], true);

    // Not streaming: one object.
    let (status, headers, text) = send(
        reqwest::Method::POST,
        &proxy.url("/api/chat"),
        None,
        Some(
            json!({"model":"m","stream":false,"options":{"num_predict":4},
                    "messages":[{"role":"user","content":"hi"}]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["model"], "m");
    assert_eq!(reply["done"], true);
    assert_eq!(reply["eval_count"], 4);
    assert!(!reply["message"]["content"].as_str().unwrap().is_empty());
    let line = last_log_line(&proxy, 2).await;
    assert_eq!(line["completion_tokens"], 4);
    assert_eq!(line["prompt_tokens"], reply["prompt_eval_count"]);

    // A body beyond Pingora's 64 KiB replay buffer: the translated body is what is sent.
    let long = "word ".repeat(40_000);
    let (status, _, text) = send(
        reqwest::Method::POST,
        &proxy.url("/api/chat"),
        None,
        Some(
            json!({"model":"m","stream":false,"options":{"num_predict":2},
                    "messages":[{"role":"user","content": long}]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["eval_count"],
        2
    );
    let recorded = sim.requests().await;
    let expected = serde_json::to_vec(&json!({"model": SERVED, "stream": false, "max_tokens": 2,
        "messages": [{"role": "user", "content": long}]}))
    .unwrap();
    assert_eq!(recorded[2]["path"], "/v1/chat/completions");
    assert_eq!(
        recorded[2]["body_len"],
        expected.len(),
        "the whole translated body"
    );
}

#[tokio::test]
async fn generate_is_a_chat_turn_and_raw_goes_to_completions_streamed_and_not() {
    let (sim, proxy) = setup();
    let (status, headers, text) = send(
        reqwest::Method::POST,
        &proxy.url("/api/generate"),
        None,
        Some(json!({"model":"m","prompt":"Once upon","system":"Be brief","options":{"num_predict":5,"stop":["\n\n"]}})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines = ndjson(&text);
    let (last, content) = lines.split_last().unwrap();
    assert!(content
        .iter()
        .all(|l| l["response"].is_string() && l["done"] == false));
    assert_eq!(last["done"], true);
    assert_eq!(last["response"], "");
    assert_eq!(last["eval_count"], 5);
    let recorded = sim.requests().await;
    // The replica applies the model's chat template, as Ollama applies its prompt template.
    assert_eq!(recorded[0]["path"], "/v1/chat/completions");
    let sent: Value = serde_json::from_str(recorded[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role":"system","content":"Be brief"},{"role":"user","content":"Once upon"}])
    );
    assert_eq!(sent["stop"], json!(["\n\n"]));
    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["endpoint"], "ollama_generate");
    assert_eq!(line["completion_tokens"], 5);

    let (status, _, text) = send(
        reqwest::Method::POST,
        &proxy.url("/api/generate"),
        None,
        Some(json!({"model":"m","prompt":"Once upon","stream":false,"options":{"num_predict":3}})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert!(!reply["response"].as_str().unwrap().is_empty());
    assert_eq!(reply["eval_count"], 3);
    assert_eq!(reply["done_reason"], "length");

    // `raw: true`: the prompt as is, to the replica's completions.
    let (status, _, text) = send(
        reqwest::Method::POST,
        &proxy.url("/api/generate"),
        None,
        Some(json!({"model":"m","prompt":"Once upon","raw":true,"options":{"num_predict":4}})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let lines = ndjson(&text);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 4);
    let joined: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert!(!joined.is_empty());
    let recorded = sim.requests().await;
    let raw = recorded.last().unwrap();
    assert_eq!(raw["path"], "/v1/completions");
    let sent: Value = serde_json::from_str(raw["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["prompt"], "Once upon");
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_line_and_a_truncated_record() {
    let (sim, proxy) = setup();
    let body =
        r#"{"model":"m","options":{"num_predict":10},"messages":[{"role":"user","content":"hi"}]}"#;
    sim.set_faults(json!({"cut_after_tokens": 3})).await;
    let (status, text) = stream_text(&proxy.url("/api/chat"), body, &[]).await;
    assert_eq!(status, 200);
    let lines = ndjson(&text);
    let last = lines.last().unwrap();
    assert!(ollama_error(last).contains("truncated"), "{text}");
    assert!(lines.iter().all(|l| l["done"] != true), "{text}");
    let line = last_log_line(&proxy, 1).await;
    assert_eq!(line["truncated"], true, "{line}");

    // The replica's own mid-stream error: one error line, its message kept.
    sim.set_faults(json!({"cut_after_tokens": null, "midstream_error_after": 2}))
        .await;
    let (_, text) = stream_text(&proxy.url("/api/chat"), body, &[]).await;
    let lines = ndjson(&text);
    let errors: Vec<_> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(lines.last().unwrap().get("error").is_some());
    let line = last_log_line(&proxy, 2).await;
    assert_eq!(line["truncated"], false);
}

#[tokio::test]
async fn tags_show_version_and_errors_in_ollama_shape() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "# keys\n").unwrap();
    let registry = KeyRegistry::load_or_empty(&keys).unwrap();
    let (only_m, _) = registry
        .create(
            NewKey {
                models: vec!["m".into()],
                ..NewKey::named("only-m")
            },
            now_unix(),
        )
        .unwrap();
    let (slow, _) = registry
        .create(
            NewKey {
                limits: KeyLimits {
                    requests_per_minute: Some(1),
                    ..KeyLimits::default()
                },
                ..NewKey::named("slow")
            },
            now_unix(),
        )
        .unwrap();
    let proxy = Proxy::start(
        &one_replica(&sim, SERVED)
            .model("other", "pool", SERVED)
            .table(&format!("[auth]\nkeys_file = \"{}\"", keys.display())),
    );
    let get = |path: &str, key: Option<&str>| {
        let url = proxy.url(path);
        let key = key.map(str::to_string);
        async move { send(reqwest::Method::GET, &url, key.as_deref(), None).await }
    };
    let post = |path: &str, key: Option<&str>, body: Value| {
        let url = proxy.url(path);
        let key = key.map(str::to_string);
        async move { send(reqwest::Method::POST, &url, key.as_deref(), Some(body)).await }
    };

    let (status, _, text) = get("/api/tags", Some(&only_m)).await;
    assert_eq!(status, 200, "{text}");
    let tags: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m"], "only the aliases the key may use");
    let (_, _, text) = get("/api/tags", Some(&slow)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["models"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The key also works as `x-api-key`.
    let r = client()
        .get(proxy.url("/api/tags"))
        .header("x-api-key", &only_m)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, _, text) = get("/api/version", Some(&only_m)).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&text).unwrap()["version"].is_string());

    let (status, _, text) = post("/api/show", Some(&only_m), json!({"model":"m"})).await;
    assert_eq!(status, 200, "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["details"].is_object());
    let (status, _, text) = post("/api/show", Some(&only_m), json!({"model":"other"})).await;
    assert_eq!(status, 404);
    assert_eq!(
        ollama_error(&serde_json::from_str(&text).unwrap()),
        "model 'other' not found"
    );

    // Ollama calls the gateway does not serve: 404 in Ollama's shape.
    let (status, _, text) = post("/api/pull", Some(&only_m), json!({"model":"m"})).await;
    assert_eq!(status, 404);
    assert!(ollama_error(&serde_json::from_str(&text).unwrap()).contains("/api/pull"));

    // A bad key: 401 before anything else.
    let (status, _, text) = get("/api/tags", Some("tg-not-a-key")).await;
    assert_eq!(status, 401, "{text}");
    ollama_error(&serde_json::from_str(&text).unwrap());
    let chat = |model: &str| json!({"model": model, "stream": false, "messages":[{"role":"user","content":"x"}]});
    let (status, _, _) = post("/api/chat", None, chat("m")).await;
    assert_eq!(status, 401);

    // Unknown, and not entitled: the same 404.
    for model in ["nope", "other"] {
        let (status, _, text) = post("/api/chat", Some(&only_m), chat(model)).await;
        assert_eq!(status, 404, "{text}");
        let message = ollama_error(&serde_json::from_str(&text).unwrap());
        assert_eq!(message, format!("model '{model}' not found"));
    }

    // Bad JSON, and fields the gateway will not translate: clear 400s.
    let r = client()
        .post(proxy.url("/api/chat"))
        .bearer_auth(&only_m)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    ollama_error(&r.json().await.unwrap());
    let with_image =
        json!({"model":"m","messages":[{"role":"user","content":"x","images":["aGk="]}]});
    let (status, _, text) = post("/api/chat", Some(&only_m), with_image).await;
    assert_eq!(status, 400);
    assert!(ollama_error(&serde_json::from_str(&text).unwrap()).contains("images"));
    let (status, _, text) = post(
        "/api/generate",
        Some(&only_m),
        json!({"model":"m","prompt":"p","context":[1]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(ollama_error(&serde_json::from_str(&text).unwrap()).contains("context"));
    let (line, _) = eventually(Duration::from_secs(5), "the generate line", || async {
        proxy
            .access_log()
            .into_iter()
            .find(|l| l["path"] == "/api/generate")
    })
    .await;
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["error"], "unsupported_parameter", "{line}");
    assert!(
        sim.requests().await.is_empty(),
        "nothing refused reached the replica"
    );

    // Rate limited: 429 with retry-after, in Ollama's shape.
    let (status, _, text) = post("/api/chat", Some(&slow), chat("m")).await;
    assert_eq!(status, 200, "{text}");
    let (status, headers, text) = post("/api/chat", Some(&slow), chat("m")).await;
    assert_eq!(status, 429, "{text}");
    assert!(headers.contains_key("retry-after"));
    ollama_error(&serde_json::from_str(&text).unwrap());

    // The replica's 503 (every retry spent): 503, retry-after, Ollama's shape.
    sim.set_faults(json!({"error_status": 503})).await;
    let (status, headers, text) = post("/api/chat", Some(&only_m), chat("m")).await;
    assert_eq!(status, 503, "{text}");
    assert!(headers.contains_key("retry-after"));
    ollama_error(&serde_json::from_str(&text).unwrap());
    sim.set_faults(json!({"error_status": null})).await;
    // A replica's 400 keeps its message.
    let (status, _, text) = post(
        "/api/chat",
        Some(&only_m),
        json!({"model":"m","stream":false,"options":{"num_predict":100000},
               "messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(ollama_error(&serde_json::from_str(&text).unwrap()).len() > 5);
}

/// Wall-clock assertions (run serially by CI).
mod timing {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn lines_arrive_as_generated_and_a_client_that_leaves_cancels_the_replica() {
        let sim = Sim::start(&["--served-model-name", SERVED, "--itl-ms", "100"]);
        let proxy = Proxy::start(&one_replica(&sim, SERVED));
        let body = r#"{"model":"m","options":{"num_predict":30},"messages":[{"role":"user","content":"hi"}]}"#;
        let response = client()
            .post(proxy.url("/api/chat"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut seen = Vec::new();
        while !seen.contains(&b'\n') {
            let piece = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the first line in time")
                .expect("stream open")
                .unwrap();
            seen.extend_from_slice(&piece);
        }
        let first: Value = serde_json::from_slice(seen.split(|b| *b == b'\n').next().unwrap())
            .expect("a whole JSON line");
        assert_eq!(first["done"], false);
        let stats = sim.stats().await;
        assert_eq!(stats["completed_total"], 0, "still generating at line 1");
        assert_eq!(stats["in_flight"], 1);
        drop(stream);
        assert_eventually(
            Duration::from_secs(2),
            "the replica sees the abort",
            || async { sim.stats().await["in_flight"] == 0 },
        )
        .await;
        assert_eq!(sim.stats().await["completed_total"], 0);
        let line = last_log_line(&proxy, 1).await;
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["endpoint"], "ollama_chat");
    }
}
