//! What clients see (issue #17 point 7): HTTP/2 cleartext on the plain listener beside
//! HTTP/1.1, and the client's own request id passed on as `x-client-request-id`. Real
//! `tokengate` and `tokengate-sim` over TCP; HTTP/2 by `curl --http2-prior-knowledge`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use reqwest::header::HeaderMap;
use serde_json::Value;

const SERVED: &str = "sim-model";

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
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
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
    let proxy = Proxy::start(&one_replica(&sim, SERVED).server("h2c = false"));
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

/// POST a chat with `headers`; status and response headers.
async fn chat_with(proxy: &Proxy, body: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap) {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let _ = response.bytes().await;
    (status, headers)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_clients_request_id_is_passed_on_beside_ours_upstream_back_and_in_the_log() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    let (status, headers) =
        chat_with(&proxy, chat, &[("x-request-id", "aiperf-run1/req-0001")]).await;
    assert_eq!(status, 200);
    let ours = header(&headers, "x-request-id")
        .expect("our id")
        .to_string();
    assert!(ours.starts_with("tg-"), "{ours}");
    assert_eq!(
        header(&headers, "x-client-request-id"),
        Some("aiperf-run1/req-0001")
    );
    let (status, headers) = chat_with(&proxy, stream, &[("x-request-id", "trace-2")]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-client-request-id"), Some("trace-2"));
    // Errors the proxy writes itself carry it too.
    let (status, headers) = chat_with(
        &proxy,
        r#"{"model":"nope","messages":[]}"#,
        &[("x-request-id", "e-3")],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-client-request-id"), Some("e-3"));
    assert!(header(&headers, "x-request-id").is_some_and(|v| v.starts_with("tg-")));

    // Too long or not visible ASCII: dropped, never passed on; nor is a client's own
    // x-client-request-id header.
    let long = "a".repeat(129);
    for bad in [long.as_str(), "has space", "caf\u{e9}"] {
        let (status, headers) = chat_with(&proxy, chat, &[("x-request-id", bad)]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-client-request-id"), None, "{bad:?}");
    }
    let (_, headers) = chat_with(&proxy, chat, &[("x-client-request-id", "forged")]).await;
    assert_eq!(header(&headers, "x-client-request-id"), None);
    let longest = "b".repeat(128);
    let (_, headers) = chat_with(&proxy, chat, &[("x-request-id", &longest)]).await;
    assert_eq!(
        header(&headers, "x-client-request-id"),
        Some(longest.as_str())
    );

    // Upstream: our id as x-request-id, the client's as x-client-request-id.
    let recorded = sim.requests().await;
    let seen: Vec<(Value, Value)> = recorded
        .iter()
        .map(|r| {
            (
                r["headers"]["x-request-id"].clone(),
                r["headers"]["x-client-request-id"].clone(),
            )
        })
        .collect();
    // The 404 never reached the replica.
    assert_eq!(seen.len(), 7, "{recorded:?}");
    assert_eq!(seen[0].0, Value::from(ours.clone()));
    assert_eq!(seen[0].1, "aiperf-run1/req-0001");
    assert_eq!(seen[1].1, "trace-2");
    for (i, (id, client)) in seen.iter().enumerate().skip(2).take(4) {
        assert!(
            id.as_str().is_some_and(|v| v.starts_with("tg-")),
            "{i}: {id}"
        );
        assert!(client.is_null(), "{i}: {client}");
    }
    assert_eq!(seen[6].1, Value::from(longest.clone()));

    // The access log has both.
    assert_eventually(Duration::from_secs(5), "eight requests logged", || async {
        proxy.access_log().len() == 8
    })
    .await;
    let log = proxy.access_log();
    let first = log
        .iter()
        .find(|r| r["request_id"] == ours.as_str())
        .expect("logged");
    assert_eq!(first["client_request_id"], "aiperf-run1/req-0001");
    let error = log.iter().find(|r| r["status"] == 404).expect("the 404");
    assert_eq!(error["client_request_id"], "e-3");
    let dropped = log
        .iter()
        .filter(|r| r["client_request_id"].is_null())
        .count();
    assert_eq!(dropped, 4, "{log:?}");
}
