//! What clients see (issue #17 point 7): HTTP/2 cleartext on the plain listener beside
//! HTTP/1.1, and the client's own request id passed on as `x-client-request-id`. Real
//! `tokengate` and `tokengate-sim` over TCP; HTTP/2 by `curl --http2-prior-knowledge`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SERVED: &str = "sim-model";

fn one_replica(sim: &Sim) -> ProxyConfig {
    ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("m", "pool", SERVED)
}

/// `curl -sS` with `args`; (success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is needed for the h2c tests (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POST `body` with curl's `protocol` flag; the body then a last line `<http_version> <code>`.
fn curl_post(protocol: &str, url: &str, body: &str) -> (String, String) {
    let (ok, out, err) = curl(&[
        protocol,
        "-N",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        "-w",
        "\n%{http_version} %{http_code}",
        url,
    ]);
    assert!(ok, "curl {protocol} failed: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (body.to_string(), status.to_string())
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_share_the_plain_listener() {
    let (_, version, _) = curl(&["-V"]);
    assert!(version.contains("HTTP2"), "curl without HTTP/2: {version}");
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim));
    let url = proxy.url("/v1/chat/completions");
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    let (body, status) = curl_post("--http2-prior-knowledge", &url, chat);
    assert_eq!(status, "2 200", "{body}");
    let json: Value = serde_json::from_str(&body).expect("a JSON body over h2c");
    assert!(
        json["choices"][0]["message"]["content"].is_string(),
        "{json}"
    );

    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (body, status) = curl_post("--http2-prior-knowledge", &url, stream);
    assert_eq!(status, "2 200", "{body}");
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert!(events.len() > 2, "chunks streamed over h2c: {body}");

    // Errors keep their JSON shape over h2c.
    let (body, status) = curl_post("--http2-prior-knowledge", &url, r#"{"model":"nope"}"#);
    assert!(status.starts_with("2 4"), "{status} {body}");
    assert_openai_error(&serde_json::from_str(&body).expect("JSON error"));

    // HTTP/1.1 on the same listener, and a tiny request shorter than the HTTP/2 preface
    // answered at once (not held until the header deadline).
    let (body, status) = curl_post("--http1.1", &url, chat);
    assert_eq!(status, "1.1 200", "{body}");
    let (ok, out, err) = curl(&[
        "--http1.0",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &proxy.url("/health"),
    ]);
    assert!(ok && out == "200", "{out} {err}");
    // Requests over both protocols are logged like any other.
    assert_eventually(Duration::from_secs(5), "three chats logged", || async {
        let ok = |r: &&Value| r["path"] == "/v1/chat/completions" && r["status"] == 200;
        proxy.access_log().iter().filter(ok).count() == 3
    })
    .await;
}

#[tokio::test]
async fn h2c_off_keeps_the_plain_listener_http1_only() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim).server("h2c = false"));
    let url = proxy.url("/v1/chat/completions");
    let chat = r#"{"model":"m","messages":[]}"#;
    let (_, status) = curl_post("--http1.1", &url, chat);
    assert_eq!(status, "1.1 200");
    let (_, out, _) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &proxy.url("/health"),
    ]);
    assert!(!out.starts_with("2 200"), "h2c answered while off: {out}");
}
