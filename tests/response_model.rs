//! The served name back to the alias in responses (issue #17 point 7): non-streaming chat,
//! completions, embeddings and Messages bodies, every chunk of chat/completions streams and a
//! Messages stream's `message_start` carry the alias in `model`; everything else is what the
//! replica sent (compared with the same request straight to the simulator), the usage metered
//! is unchanged, and `expose_served_name = true` keeps the served name. Real `tokengate` and
//! `tokengate-sim`; HTTP/1.1 (reqwest, a raw socket for the framing) and h2c (curl).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A served name longer than the alias, with a `/` (escaped or not on the wire).
const SERVED: &str = "org/served-model";
const ALIAS: &str = "alias-m";
/// The same served name with `expose_served_name = true`.
const KEPT: &str = "kept-m";
/// The replica's second served name: vLLM answers it with its first (`SERVED`).
const SECOND_SERVED: &str = "org/second";
const SECOND: &str = "second-m";

fn setup() -> (Sim, Proxy) {
    let sim = Sim::start(&["--served-model-name", SERVED, SECOND_SERVED]);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[sim.addr])
            .model(ALIAS, "pool", SERVED)
            .model(SECOND, "pool", SECOND_SERVED)
            .table(&format!(
                "[[models]]\nalias = \"{KEPT}\"\ncluster = \"pool\"\nserved_name = \"{SERVED}\"\n\
                 expose_served_name = true"
            )),
    );
    (sim, proxy)
}

/// POST `body` and return status, whether it carried a `content-length`, and the raw text.
async fn post_raw(url: &str, body: &Value) -> (u16, Option<String>, String) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    let length = r
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_string());
    (status, length, r.text().await.expect("body"))
}

/// `value` with the per-request fields (ids, timestamps) and `model` removed, recursively.
fn without_ids(mut value: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for key in ["id", "created", "model"] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// The `n`th access-log line (1-based), once written.
async fn log_line(proxy: &Proxy, n: usize) -> Value {
    eventually(Duration::from_secs(5), "the access log line", || async {
        let lines = proxy.access_log();
        (lines.len() >= n).then(|| lines[n - 1].clone())
    })
    .await
    .0
}

#[tokio::test]
async fn non_streaming_bodies_carry_the_alias_and_the_switch_keeps_the_served_name() {
    let (sim, proxy) = setup();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a \"model\" question"}],
                   "max_tokens": 5}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "once upon", "max_tokens": 4}),
        ),
        ("/v1/embeddings", json!({"input": ["hello", "world"]})),
        (
            "/v1/messages",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ),
    ];
    let mut logged = 0;
    for (path, body) in cases {
        let with = |model: &str| {
            let mut b = body.clone();
            b["model"] = json!(model);
            b
        };
        let (status, length, text) = post_raw(&proxy.url(path), &with(ALIAS)).await;
        assert_eq!(status, 200, "{path}: {text}");
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["model"], ALIAS, "{path}: {text}");
        assert!(
            !text.contains(SERVED),
            "{path}: the served name leaked: {text}"
        );
        assert_eq!(
            length, None,
            "{path}: a changed body carries no stale length"
        );
        logged += 1;
        let rewritten = log_line(&proxy, logged).await;

        // Byte for byte what the replica answers, but for `model` (and the per-request ids).
        let (_, _, direct) = post_raw(&sim.url(path), &with(SERVED)).await;
        let direct: Value = serde_json::from_str(&direct).unwrap();
        assert_eq!(direct["model"], SERVED);
        assert_eq!(without_ids(reply.clone()), without_ids(direct), "{path}");

        // The switch: the served name kept, the replica's length kept.
        let (status, length, text) = post_raw(&proxy.url(path), &with(KEPT)).await;
        assert_eq!(status, 200, "{text}");
        let kept: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(kept["model"], SERVED, "{path}: {text}");
        assert_eq!(length, Some(text.len().to_string()), "{path}");
        logged += 1;
        let exposed = log_line(&proxy, logged).await;
        // Metering is unchanged by the rewrite: the same tokens for the same request.
        for field in ["prompt_tokens", "completion_tokens", "usage_source"] {
            assert_eq!(rewritten[field], exposed[field], "{path} {field}");
        }
        let usage = &reply["usage"];
        let prompt = usage
            .get("prompt_tokens")
            .or_else(|| usage.get("input_tokens"))
            .unwrap();
        assert_eq!(&rewritten["prompt_tokens"], prompt, "{path}: {rewritten}");

        // The replica's other served name: answered with its first, shown as the alias asked.
        let (status, _, text) = post_raw(&proxy.url(path), &with(SECOND)).await;
        assert_eq!(status, 200, "{text}");
        let second: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(second["model"], SECOND, "{path}: {text}");
        logged += 1;
    }
    let sent: Vec<Value> = sim.requests().await;
    assert!(sent.iter().any(|r| r["model"] == SECOND_SERVED));
}

/// Each SSE event's JSON (the `data:` lines that parse; Messages events also have `event:`).
fn chunks(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

fn content_of(chunks: &[Value], path: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c.pointer(path).and_then(Value::as_str))
        .collect()
}

#[tokio::test]
async fn every_stream_chunk_carries_the_alias_and_the_content_is_the_replicas() {
    let (sim, proxy) = setup();
    let cases = [
        (
            "/v1/chat/completions",
            "/choices/0/delta/content",
            json!({"messages": [{"role": "user", "content": "tell a story"}], "max_tokens": 12,
                   "stream": true, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/completions",
            "/choices/0/text",
            json!({"prompt": "once upon", "max_tokens": 9, "stream": true}),
        ),
    ];
    let mut logged = 0;
    for (path, content, body) in cases {
        let with = |model: &str| {
            let mut b = body.clone();
            b["model"] = json!(model);
            b.to_string()
        };
        let (status, text) = stream_text(&proxy.url(path), &with(ALIAS), &[]).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            !text.contains(SERVED),
            "{path}: the served name leaked: {text}"
        );
        let via_proxy = chunks(&text);
        assert!(via_proxy.len() > 3, "{path}: {text}");
        assert!(
            via_proxy.iter().all(|c| c["model"] == ALIAS),
            "{path}: every chunk carries the alias: {text}"
        );
        assert_eq!(sse_events(&text).last().unwrap(), "[DONE]");
        let (_, direct) = stream_text(&sim.url(path), &with(SERVED), &[]).await;
        let direct = chunks(&direct);
        assert_eq!(via_proxy.len(), direct.len(), "{path}");
        assert_eq!(
            content_of(&via_proxy, content),
            content_of(&direct, content)
        );
        assert!(!content_of(&direct, content).is_empty());
        logged += 1;
        let line = log_line(&proxy, logged).await;
        let usage = &direct.last().unwrap()["usage"];
        if !usage.is_null() {
            assert_eq!(
                line["completion_tokens"], usage["completion_tokens"],
                "{line}"
            );
            assert_eq!(line["prompt_tokens"], usage["prompt_tokens"], "{line}");
        }
        assert_eq!(line["truncated"], false);

        let (_, text) = stream_text(&proxy.url(path), &with(KEPT), &[]).await;
        assert!(chunks(&text).iter().all(|c| c["model"] == SERVED), "{text}");
        logged += 1;
        let kept = log_line(&proxy, logged).await;
        assert_eq!(kept["completion_tokens"], line["completion_tokens"]);
        assert_eq!(kept["prompt_tokens"], line["prompt_tokens"]);
    }
}

#[tokio::test]
async fn a_messages_stream_names_the_alias_in_message_start_only() {
    let (sim, proxy) = setup();
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 6, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
    };
    let (status, text) = stream_text(&proxy.url("/v1/messages"), &body(ALIAS), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains(SERVED), "{text}");
    let events = chunks(&text);
    assert_eq!(events[0]["type"], "message_start", "{text}");
    assert_eq!(events[0]["message"]["model"], ALIAS, "{text}");
    let (_, direct) = stream_text(&sim.url("/v1/messages"), &body(SERVED), &[]).await;
    let direct = chunks(&direct);
    assert_eq!(direct[0]["message"]["model"], SERVED);
    // After `message_start`, every event is the replica's (the first block's id aside).
    assert_eq!(without_ids(Value::from(events[1..].to_vec())), {
        without_ids(Value::from(direct[1..].to_vec()))
    });
    let line = log_line(&proxy, 1).await;
    assert_eq!(line["completion_tokens"], 6, "{line}");
    assert_eq!(
        line["prompt_tokens"],
        direct[0]["message"]["usage"]["input_tokens"]
    );

    let (_, text) = stream_text(&proxy.url("/v1/messages"), &body(KEPT), &[]).await;
    assert_eq!(chunks(&text)[0]["message"]["model"], SERVED, "{text}");
}

/// One HTTP/1.1 exchange on `stream`: the raw response head and the de-chunked body.
fn exchange(stream: &mut std::net::TcpStream, host: &str, body: &str) -> (String, String) {
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            if let Some(body) = dechunk(rest) {
                return (head.to_ascii_lowercase(), body);
            }
        }
    }
}

/// A complete chunked body, decoded; `None` while incomplete.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return after.starts_with("\r\n").then_some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

#[tokio::test]
async fn the_changed_length_is_framed_right_over_http1_and_h2c() {
    let (_sim, proxy) = setup();
    let chat = |model: &str| {
        json!({"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]})
            .to_string()
    };
    // HTTP/1.1: chunked, and the connection serves the next request.
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let host = proxy.addr.to_string();
    for _ in 0..2 {
        let (head, body) = exchange(&mut stream, &host, &chat(ALIAS));
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["model"], ALIAS);
    }

    // h2c (prior knowledge): the body ends with its last frame; curl checks the framing.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/json", "-d", &chat(ALIAS)])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(proxy.url("/v1/chat/completions"))
        .output()
        .expect("curl is needed for the h2c test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "2 200", "{body}");
    let reply: Value = serde_json::from_str(body).unwrap();
    assert_eq!(reply["model"], ALIAS, "{body}");
}

#[tokio::test]
async fn a_runtime_alias_takes_the_switch_too() {
    let (_sim, proxy) = setup();
    let chat = |model: &str| json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]});
    for (alias, expose, want) in [("rt-kept", true, SERVED), ("rt-alias", false, "rt-alias")] {
        let r = proxy
            .admin_request(reqwest::Method::PUT, &format!("/admin/models/{alias}"))
            .json(&json!({"cluster": "pool", "served_name": SERVED, "expose_served_name": expose}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), &chat(alias)).await;
        assert_eq!(status, 200, "{text}");
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["model"], want, "{alias}: {text}");
    }
    let config = get_json(proxy.admin_request(reqwest::Method::GET, "/admin/config")).await;
    let models = config["config"]["models"].as_array().unwrap();
    let kept = models.iter().find(|m| m["alias"] == "rt-kept").unwrap();
    assert_eq!(kept["expose_served_name"], true, "{kept}");
}
