//! Foundation behaviour over real TCP: routing by the body's `model`, byte-exact rewrite at
//! every body size, and every error path answered in the OpenAI shape.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SERVED_A: &str = "org/model-a-served";
const SERVED_B: &str = "org/model-b-served";

struct Fleet {
    a1: Sim,
    a2: Sim,
    b: Sim,
    proxy: Proxy,
}

fn fleet() -> Fleet {
    let a1 = Sim::start(&["--served-model-name", SERVED_A, "--replica-name", "a1"]);
    let a2 = Sim::start(&["--served-model-name", SERVED_A, "--replica-name", "a2"]);
    let b = Sim::start(&["--flavour", "trtllm", "--served-model-name", SERVED_B]);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool-a", "vllm", &[a1.addr, a2.addr])
            .with(&["policy = \"round-robin\""])
            .cluster("pool-b", "trtllm", &[b.addr])
            .model("alpha", "pool-a", SERVED_A)
            .model("beta", "pool-b", SERVED_B),
    );
    Fleet { a1, a2, b, proxy }
}

async fn all_requests(sims: &[&Sim]) -> Vec<Value> {
    let mut out = Vec::new();
    for s in sims {
        out.extend(s.requests().await);
    }
    out
}

#[tokio::test]
async fn routes_by_alias_to_cluster_and_served_name() {
    let f = fleet();
    for _ in 0..4 {
        let (status, headers, body) = post(
            &f.proxy.url("/v1/chat/completions"),
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"alpha"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(body["object"], "chat.completion");
    }
    let (status, _, body) = post(
        &f.proxy.url("/v1/completions"),
        br#"{"prompt":"hi","model":"beta","max_tokens":3}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let a = all_requests(&[&f.a1, &f.a2]).await;
    assert_eq!(a.len(), 4, "alpha went to pool-a only");
    assert!(a.iter().all(|r| r["model"] == SERVED_A));
    assert_eq!(f.a1.requests().await.len(), 2, "round robin over pool-a");
    let b = f.b.requests().await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["model"], SERVED_B);
    assert_eq!(b[0]["path"], "/v1/completions");
}

/// Bodies around Pingora's 64 KiB replay buffer and far beyond it, `model` last: every one
/// reaches the replica whole, rewritten, with the exact length the rewrite implies.
#[tokio::test]
async fn every_body_size_reaches_the_replica_rewritten() {
    let f = fleet();
    let sizes = [
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        1024 * 1024,
        16 * 1024 * 1024,
    ];
    for size in sizes {
        let body = chat_body_model_last("alpha", size);
        // No time bound: speed belongs in bench/, the client's own timeout catches a hang.
        let (status, _, resp) = post(&f.proxy.url("/v1/chat/completions"), body).await;
        assert_eq!(status, 200, "size {size}: {resp}");
    }
    let mut seen: Vec<u64> = all_requests(&[&f.a1, &f.a2])
        .await
        .iter()
        .map(|r| {
            assert_eq!(r["model"], SERVED_A);
            r["body_len"].as_u64().expect("body_len")
        })
        .collect();
    seen.sort_unstable();
    let grow = (SERVED_A.len() - "alpha".len()) as u64;
    let expected: Vec<u64> = sizes.iter().map(|s| *s as u64 + grow).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn rewrite_is_byte_exact_around_escaped_strings() {
    let f = fleet();
    let body = br#"{ "messages" : [ {"role":"user","content":"say \"model\": \"beta\" \\"} ],
  "temperature":0.5 , "model" : "alpha" , "user":"\u00e9" }"#;
    let (status, _, resp) = post(&f.proxy.url("/v1/chat/completions"), body.to_vec()).await;
    assert_eq!(status, 200, "{resp}");
    let recorded = all_requests(&[&f.a1, &f.a2]).await;
    let sent = recorded[0]["body"]
        .as_str()
        .expect("small bodies are recorded");
    let original = std::str::from_utf8(body).unwrap();
    assert_eq!(
        sent,
        original.replace("\"alpha\"", &format!("\"{SERVED_A}\""))
    );
}

#[tokio::test]
async fn chunked_request_body_is_forwarded() {
    let f = fleet();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(br#"{"messages":[{"role":"user","#.to_vec()),
        Ok(br#""content":"hello"}],"mod"#.to_vec()),
        Ok(br#"el":"alpha"}"#.to_vec()),
    ];
    let stream = futures_util::stream::iter(pieces);
    let r = client()
        .post(f.proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let recorded = all_requests(&[&f.a1, &f.a2]).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["model"], SERVED_A);
}

#[tokio::test]
async fn request_errors_are_openai_shaped() {
    let f = fleet();
    let url = f.proxy.url("/v1/chat/completions");
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"", 400, "empty_body"),
        (b"{not json", 400, "invalid_json"),
        (b"[1,2]", 400, "not_an_object"),
        (br#"{"messages":[]}"#, 400, "missing_model"),
        (br#"{"model":null}"#, 400, "invalid_model"),
        (br#"{"model":7}"#, 400, "invalid_model"),
        (br#"{"model":"alpha","model":"beta"}"#, 400, "duplicate_key"),
        (
            br#"{"model":"alpha","mod\u0065l":"beta"}"#,
            400,
            "duplicate_key",
        ),
        (
            br#"{"model":"gpt-nope","messages":[]}"#,
            404,
            "model_not_found",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, _, resp) = post(&url, body.to_vec()).await;
        assert_eq!(
            status,
            want_status,
            "{}: {resp}",
            String::from_utf8_lossy(body)
        );
        let e = assert_openai_error(&resp);
        assert_eq!(e["code"], want_code, "{resp}");
    }
    assert!(
        all_requests(&[&f.a1, &f.a2, &f.b]).await.is_empty(),
        "nothing reached a replica"
    );

    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_openai_error(&r.json().await.unwrap());

    for path in ["/v1/nothing", "/metrics", "/admin/config"] {
        let r = client().get(f.proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e = assert_openai_error(&r.json::<Value>().await.unwrap()).clone();
        assert_eq!(e["code"], "unknown_url");
    }
}

#[tokio::test]
async fn local_endpoints() {
    let f = fleet();
    let models = get_json(client().get(f.proxy.url("/v1/models"))).await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["alpha", "beta"]);
    let one = client()
        .get(f.proxy.url("/v1/models/beta"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client()
        .get(f.proxy.url("/v1/models/zzz"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let health = client().get(f.proxy.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn connect_failure_retries_on_another_replica() {
    let live = Sim::start(&["--served-model-name", SERVED_A]);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[dead_addr(), live.addr, dead_addr()])
            .model("alpha", "pool", SERVED_A),
    );
    for _ in 0..6 {
        let (status, _, body) = post(
            &proxy.url("/v1/chat/completions"),
            br#"{"model":"alpha","messages":[]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let recorded = live.requests().await;
    assert_eq!(recorded.len(), 6);
    let ids: std::collections::HashSet<&str> = recorded
        .iter()
        .map(|r| r["x_request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6, "each attempt carries its own X-Request-Id");
}

#[tokio::test]
async fn upstream_error_bodies_are_normalised_with_status_kept() {
    let f = fleet();
    // vLLM 404 for a served name it does not have (misconfigured route).
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool-a", "vllm", &[f.a1.addr])
            .cluster("pool-b", "trtllm", &[f.b.addr])
            .model("wrong", "pool-a", "not-served-here")
            .model("alpha", "pool-a", SERVED_A)
            .model("beta", "pool-b", SERVED_B),
    );
    let (status, _, body) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"wrong","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let e = assert_openai_error(&body);
    assert_eq!(e["code"], "model_not_found");

    // trtllm validation error: `{"error":"str"}` with 400.
    let (status, _, body) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"beta","messages":[],"not_a_field":1}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(assert_openai_error(&body)["message"]
        .as_str()
        .unwrap()
        .contains("not_a_field"));

    // Engine death in vLLM 0.11: 500 with an empty body.
    f.a1.set_faults(json!({"error_status": 500, "empty_error_body": true}))
        .await;
    let (status, _, body) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"alpha","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(assert_openai_error(&body)["type"], "server_error");
}

/// Tests with wall-clock bounds: run alone and one at a time (see tests/common: `serial`).
mod timing {
    use super::*;

    #[tokio::test]
    async fn oversized_body_is_refused_fast_without_reading_it() {
        let _serial = serial().await;
        let f = fleet();
        let body = chat_body_model_last("alpha", 17 * 1024 * 1024);
        let started = Instant::now();
        let (status, _, resp) = post(&f.proxy.url("/v1/chat/completions"), body).await;
        assert_eq!(status, 413, "{resp}");
        assert_eq!(assert_openai_error(&resp)["code"], "request_too_large");
        assert!(started.elapsed() < Duration::from_secs(5));

        // Chunked (no Content-Length): refused once the limit is crossed.
        let chunk = vec![b' '; 1024 * 1024];
        let pieces = (0..17).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let r = client()
            .post(f.proxy.url("/v1/chat/completions"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
            .send()
            .await;
        if let Ok(r) = r {
            assert_eq!(r.status(), 413);
        } // a client may also see the connection closed mid-upload; never a hang
        assert!(all_requests(&[&f.a1, &f.a2]).await.is_empty());
    }

    #[tokio::test]
    async fn upstream_failures_map_to_502_503_504() {
        let _serial = serial().await;
        // Every replica refuses while health checks still trust them: 502. With active checks
        // they never pass a probe, so there is no replica to try: 503.
        let proxy = Proxy::start(
            &ProxyConfig::default()
                .cluster("dead", "vllm", &[dead_addr(), dead_addr()])
                .with(&["health = { enabled = false }"])
                .cluster("down", "vllm", &[dead_addr()])
                .cluster("empty", "vllm", &[])
                .model("gone", "dead", "x")
                .model("down", "down", "x")
                .model("none", "empty", "x"),
        );
        let (status, _, body) = post(
            &proxy.url("/v1/chat/completions"),
            br#"{"model":"gone","messages":[]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(assert_openai_error(&body)["code"], "upstream_unreachable");
        let (status, headers, body) = post(
            &proxy.url("/v1/chat/completions"),
            br#"{"model":"down","messages":[]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(assert_openai_error(&body)["code"], "no_replica_available");
        assert_eq!(headers["retry-after"], "1");

        // No replica at all: 503 with Retry-After.
        let (status, headers, body) = post(
            &proxy.url("/v1/chat/completions"),
            br#"{"model":"none","messages":[]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_openai_error(&body);
        assert_eq!(headers["retry-after"], "1");

        // Replica stalls past the read timeout: 504 within the timeout.
        let slow = Sim::start(&["--served-model-name", "s", "--stall-ms", "5000"]);
        let proxy = Proxy::start(
            &ProxyConfig::default()
                .server("read_timeout_ms = 700")
                .cluster("slow", "vllm", &[slow.addr])
                .model("slow", "slow", "s"),
        );
        let started = Instant::now();
        let (status, _, body) = post(
            &proxy.url("/v1/chat/completions"),
            br#"{"model":"slow","messages":[]}"#.to_vec(),
        )
        .await;
        assert_eq!(status, 504, "{body}");
        assert_eq!(assert_openai_error(&body)["code"], "upstream_timeout");
        // 3x read_timeout_ms, and well below the replica's 5 s stall.
        assert!(started.elapsed() < 3 * Duration::from_millis(700));
    }
}
