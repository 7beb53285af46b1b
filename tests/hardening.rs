//! Adversarial tests for issue #13 (hardening the edge), against the real binary and the
//! simulator on 127.0.0.1: strict parameter types, malformed framing, HTTP/1.0 clients, the
//! body-bytes budget and deadlines, the admin token file, passive ejection under passing probes.
//! Tests that measure time or memory bound them generously (≥ 3× what they expect).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SERVED: &str = "sim-model";

/// Send `request` on a fresh connection and read until the server closes or `wait` passes.
fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// ---------------------------------------------------------------------------------------------
// Strict parameter types (item 3)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_json_types_are_refused_naming_the_parameter() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let cases = [
        ("/v1/chat/completions", r#""n":"5""#, "n"),
        ("/v1/chat/completions", r#""n":5.0"#, "n"),
        (
            "/v1/chat/completions",
            r#""max_completion_tokens":4000.0"#,
            "max_completion_tokens",
        ),
        (
            "/v1/chat/completions",
            r#""max_completion_tokens":"4000""#,
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", r#""max_tokens":4e3"#, "max_tokens"),
        ("/v1/chat/completions", r#""stream":"true""#, "stream"),
        ("/v1/chat/completions", r#""stream":1"#, "stream"),
        (
            "/v1/chat/completions",
            r#""temperature":"0.5""#,
            "temperature",
        ),
        ("/v1/chat/completions", r#""tools":{}"#, "tools"),
        ("/v1/completions", r#""max_tokens":"16""#, "max_tokens"),
        ("/v1/completions", r#""n":-1"#, "n"),
        ("/v1/embeddings", r#""user":7"#, "user"),
    ];
    for (path, field, param) in cases {
        let input = if path == "/v1/chat/completions" {
            r#""messages":[{"role":"user","content":"hi"}]"#
        } else if path == "/v1/completions" {
            r#""prompt":"hi""#
        } else {
            r#""input":"hi""#
        };
        let body = format!(r#"{{"model":"m",{input},{field}}}"#);
        let (status, _, reply) = post(&proxy.url(path), body.into_bytes()).await;
        assert_eq!(status, 400, "{path} {field}: {reply}");
        let error = assert_openai_error(&reply);
        assert_eq!(error["code"], "invalid_type", "{field}: {reply}");
        assert_eq!(error["param"], param, "{field}: {reply}");
        assert!(error["message"].as_str().unwrap_or("").contains(param));
    }
    // Nulls mean "not given", as in OpenAI's API.
    let body = r#"{"model":"m","messages":[],"n":null,"stream":null,"max_tokens":null}"#;
    let (status, _, reply) = post(&proxy.url("/v1/chat/completions"), body.into()).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        sim.requests().await.len() == 1,
        "refused requests never reach a replica"
    );
}

/// Why the types must be strict: the simulator coerces like vLLM's pydantic models, so a
/// string `n` that a rule would not see is honoured upstream.
#[tokio::test]
async fn the_simulator_coerces_like_pydantic() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let body = json!({"model": SERVED, "messages": [{"role": "user", "content": "hi"}],
                      "n": "3", "max_tokens": 4.0});
    let (status, _, reply) = post(&sim.url("/v1/chat/completions"), body.to_string().into()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["choices"].as_array().map(Vec::len),
        Some(3),
        "{reply}"
    );
    assert_eq!(reply["usage"]["completion_tokens"], 12, "{reply}");
    let streamed = json!({"model": SERVED, "prompt": "x", "stream": "true", "max_tokens": 2});
    let (status, text) = stream_text(&sim.url("/v1/completions"), &streamed.to_string(), &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn the_shipped_team_caps_cannot_be_bypassed_with_coercible_values() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua-free-rules");
    let config = one_replica(&sim, SERVED).top(&format!(
        "rules = [\"{}\"]",
        rules.join("30-team-caps.toml").display()
    ));
    // The shipped rules name the demo models; give them routes.
    let config = config
        .model("mistral-7b", "pool", SERVED)
        .model("llama-3.1-8b", "pool", SERVED)
        .table("[rate_limit_classes.batch]");
    let proxy = Proxy::start(&config);
    for field in [
        r#""n":"5""#,
        r#""max_tokens":4000.0"#,
        r#""max_completion_tokens":4e3"#,
    ] {
        let body = format!(r#"{{"model":"mistral-7b","messages":[],{field}}}"#);
        let (status, _, reply) = post(&proxy.url("/v1/chat/completions"), body.into()).await;
        assert_eq!(status, 400, "{field} passed: {reply}");
    }
    assert!(sim.requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Client faults (item 4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_chunked_bodies_get_400_json() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies = [
        "zz\r\n{}\r\n0\r\n\r\n",                 // size not hex
        "5\r\n{\"model\":1}\r\n0\r\n\r\n",       // chunk longer than its size
        "3\r\n{}\r\n0\r\n\r\n",                  // chunk shorter than its size
        "-1\r\n{}\r\n0\r\n\r\n",                 // negative size
        "ffffffffffffffffff\r\n{}\r\n0\r\n\r\n", // size overflows
        "2;\x01\x02\r\n{}\r\n0\r\n\r\n",         // garbage in the extension
    ];
    let mut statuses = Vec::new();
    for body in bodies {
        let request = format!("{head}{body}");
        let (response, _) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(10));
        let status = status_of(&response);
        statuses.push(status);
        assert_eq!(status, 400, "{body:?}: {response}");
        assert!(
            json_body(&response)["error"]["message"].is_string(),
            "not an OpenAI error: {response}"
        );
    }
    let server_errors = metric_sum(
        &proxy,
        "tokengate_requests_total",
        &[("status_class", "5xx")],
    )
    .await;
    assert_eq!(server_errors, 0.0, "{statuses:?}");
}

#[tokio::test]
async fn clients_dropping_mid_stream_are_client_closed_not_server_errors() {
    let sim = Sim::start(&["--served-model-name", SERVED, "--itl-ms", "20"]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let body = r#"{"model":"m","stream":true,"max_tokens":200,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let clients = 200;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let request = request.clone();
        let addr = proxy.addr;
        tasks.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(request.as_bytes()).expect("write");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            // Read the header and a first event, then hang up mid-stream.
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(6).any(|w| w == b"data: ") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            drop(s);
            String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200")
        }));
    }
    let started = tasks
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(started, clients, "every stream started");
    // Each request ends when the proxy notices the closed socket on its next write.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = proxy.access_log();
        if lines.len() >= clients || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lines.len(), clients, "access log lines");
    for line in &lines {
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["error"], "client_closed", "{line}");
        assert_eq!(line["truncated"], false, "{line}");
    }
    let labels = [("status_class", "client_closed")];
    let closed = metric_sum(&proxy, "tokengate_requests_total", &labels).await;
    assert_eq!(closed, clients as f64);
    let server_errors = metric_sum(
        &proxy,
        "tokengate_requests_total",
        &[("status_class", "5xx")],
    )
    .await;
    assert_eq!(server_errors, 0.0);
    let truncated = metric_sum(&proxy, "tokengate_truncated_streams_total", &[]).await;
    assert_eq!(truncated, 0.0);
}

#[tokio::test]
async fn http10_clients_get_a_readable_stream_and_a_closed_connection() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let body =
        r#"{"model":"m","stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let (response, closed) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(20));
    assert!(closed, "the connection stayed open: {response}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "closed only by a timeout"
    );
    assert_eq!(status_of(&response), 200, "{response}");
    let (head, rest) = response.split_once("\r\n\r\n").unwrap_or_default();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    // The body is the bare event stream, no chunk-size lines.
    assert!(rest.starts_with("data: "), "{rest}");
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
}

// ---------------------------------------------------------------------------------------------
// Bounded buffering and deadlines (items 1, 2)
// ---------------------------------------------------------------------------------------------

fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmSize:"))
}

#[tokio::test]
async fn declared_lengths_reserve_no_memory() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let (rss0, vsz0) = memory_kib(proxy.pid());
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16000000\r\n\r\n{";
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(head.as_bytes()).expect("write");
        held.push(s);
    }
    // Every connection is being read (its first byte arrived) before memory is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, vsz1) = memory_kib(proxy.pid());
    drop(held);
    let (rss_mb, vsz_mb) = ((rss1 - rss0) / 1024, (vsz1.saturating_sub(vsz0)) / 1024);
    println!("300 × CL 16 MB: RSS +{rss_mb} MB, VSZ +{vsz_mb} MB");
    assert!(rss_mb < 100, "RSS grew {rss_mb} MB");
    assert!(vsz_mb < 100, "virtual memory grew {vsz_mb} MB");
    // Still serving.
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"m","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
}

/// A key limited to one request at a time holds at most one body: the second upload is
/// refused from its headers alone, before a byte of its body is read.
#[tokio::test]
async fn key_limits_apply_before_the_body_is_buffered() {
    use tokengate::auth::{now_unix, KeyRegistry, NewKey};
    use tokengate::ratelimit::KeyLimits;
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "# keys\n").expect("keys file");
    let registry = KeyRegistry::load_or_empty(&keys).expect("keys load");
    let limits = KeyLimits {
        max_concurrent: Some(1),
        requests_per_minute: Some(3),
        ..KeyLimits::default()
    };
    let new = NewKey {
        limits,
        ..NewKey::named("one-at-a-time")
    };
    let (secret, _) = registry.create(new, now_unix()).expect("key");
    let proxy = Proxy::start(
        &one_replica(&sim, SERVED).table(&format!("[auth]\nkeys_file = \"{}\"", keys.display())),
    );
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Length: 10000000\r\n\r\n"
    );
    // The first upload holds the key's one slot while it dribbles.
    let mut first = TcpStream::connect(proxy.addr).expect("connect");
    first.write_all(head.as_bytes()).expect("head");
    first.write_all(&[b' '; 1000]).expect("some body");
    std::thread::sleep(Duration::from_millis(300));
    // The second is refused with only its headers sent.
    let (reply, _) = raw(proxy.addr, head.as_bytes(), Duration::from_secs(5));
    assert_eq!(status_of(&reply), 429, "{reply}");
    assert_eq!(
        json_body(&reply)["error"]["code"],
        "rate_limit_exceeded",
        "{reply}"
    );
    assert!(reply.contains("max_concurrent"), "{reply}");
    drop(first);
    // requests_per_minute = 3: the first upload and two more; the next is refused, also from
    // its headers (a concurrency refusal takes nothing from the bucket).
    let body = br#"{"model":"m","messages":[]}"#;
    let ask = || {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .body(body.to_vec())
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut statuses = Vec::new();
    while statuses.len() < 3 && Instant::now() < deadline {
        let status = ask().await.expect("send").status().as_u16();
        if status == 429 && statuses.is_empty() {
            // The first upload's slot is freed when the proxy notices it closed.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429], "requests_per_minute = 3");
}

// ---------------------------------------------------------------------------------------------
// Admin and reload (item 5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_admin_token_file_is_a_config_error_and_the_running_token_stays() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let config = one_replica(&sim, SERVED);
    let proxy = Proxy::start(&config);
    std::fs::remove_file(proxy.dir.path().join("admin-token")).expect("remove token");
    let check = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&proxy.config_path)
        .env_remove("TOKENGATE_ADMIN_TOKEN")
        .output()
        .expect("run check");
    let said = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "check passed: {said}");
    assert!(said.contains("admin_token_file"), "{said}");
    let reload = proxy
        .admin_request(reqwest::Method::POST, "/admin/reload")
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status().as_u16(), 400);
    let text = reload.text().await.unwrap_or_default();
    assert!(text.contains("admin_token_file"), "{text}");
    // The old token still opens the admin API.
    let config_page = proxy
        .admin_request(reqwest::Method::GET, "/admin/config")
        .send()
        .await
        .expect("get");
    assert_eq!(config_page.status().as_u16(), 200);
}

#[tokio::test]
async fn a_reload_that_changes_listeners_says_they_wait_for_an_upgrade() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    // A second listener (nothing binds it before an upgrade).
    let changed = text.replacen(
        &format!("\nlisten = [\"{ANY_PORT}\"]"),
        "\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&proxy.config_path, changed).expect("write");
    let reply = get_json(proxy.admin_request(reqwest::Method::POST, "/admin/reload")).await;
    assert_eq!(
        reply["changes"]["needs_upgrade"],
        json!(["server.listen"]),
        "{reply}"
    );
    assert!(
        reply["warning"].as_str().unwrap_or("").contains("upgrade"),
        "{reply}"
    );
}

// ---------------------------------------------------------------------------------------------
// Replica answers (item 6) and smaller items
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_replica_429_is_retried_elsewhere_and_a_final_429_or_503_carries_retry_after() {
    let a = Sim::start(&["--served-model-name", SERVED, "--replica-name", "a"]);
    let b = Sim::start(&["--served-model-name", SERVED, "--replica-name", "b"]);
    a.set_faults(json!({"error_status": 429})).await;
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[a.addr, b.addr])
            .with(&["policy = \"round-robin\"", "passive = { failures = 0 }"])
            .model("m", "pool", SERVED),
    );
    let url = proxy.url("/v1/chat/completions");
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..4 {
        let (status, _, reply) = post(&url, body.to_vec()).await;
        assert_eq!(status, 200, "a 429 was not retried on b: {reply}");
    }
    assert!(!a.requests().await.is_empty(), "round robin reached a");
    for (fault, want) in [(429, 429), (503, 503)] {
        a.set_faults(json!({"error_status": fault})).await;
        b.set_faults(json!({"error_status": fault})).await;
        let (status, headers, reply) = post(&url, body.to_vec()).await;
        assert_eq!(status, want, "{reply}");
        assert!(headers.contains_key("retry-after"), "{fault}: {headers:?}");
        assert_openai_error(&reply);
    }
}

#[tokio::test]
async fn upgrade_headers_are_not_forwarded() {
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_replica(&sim, SERVED));
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    let recorded = sim.requests().await;
    let headers = &recorded[0]["headers"];
    assert!(headers.get("upgrade").is_none(), "{headers}");
    assert!(headers.get("http2-settings").is_none(), "{headers}");
    let connection = headers["connection"].as_str().unwrap_or("");
    assert!(
        !connection.to_ascii_lowercase().contains("upgrade"),
        "{headers}"
    );
}

/// Wall-clock windows (the budget's fast refusals, the body deadline, the passive cool-down
/// with probes passing): the serial timing group.
mod timing {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_budget_get_a_fast_503_and_the_budget_holds() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", SERVED]);
        let proxy = Proxy::start(
            &one_replica(&sim, SERVED)
                .server("max_buffered_body_bytes = 4000000")
                .server("max_buffered_body_bytes_per_key = 4000000")
                .server("client_body_timeout_ms = 20000"),
        );
        // Eight uploads of 1.5 MB: the first 1 MB of each is sent, then they stall.
        let total = 1_500_000;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
        );
        let mut streams = Vec::new();
        let chunk = vec![b' '; 1_000_000];
        for _ in 0..8 {
            let mut s = TcpStream::connect(proxy.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(head.as_bytes()).expect("head");
            let _ = s.write_all(&chunk);
            streams.push(s);
        }
        let started = Instant::now();
        let mut busy = 0;
        for s in &mut streams {
            let mut buf = [0u8; 4096];
            s.set_read_timeout(Some(Duration::from_millis(1500)))
                .expect("timeout");
            if let Ok(n) = s.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if status_of(&text) == 503 {
                    assert!(
                        text.to_ascii_lowercase().contains("retry-after: 1"),
                        "{text}"
                    );
                    assert_eq!(
                        json_body(&text)["error"]["code"],
                        "body_budget_exceeded",
                        "{text}"
                    );
                    busy += 1;
                }
            }
        }
        println!("{busy} of 8 uploads refused in {:?}", started.elapsed());
        // Declared lengths are reserved up front: 4 MB admit two uploads of 1.5 MB, the other
        // six are refused at once (not after each has buffered part of its body).
        assert_eq!(busy, 6, "refused");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusals were not fast"
        );
        drop(streams);
        // The budget is returned when they close: a normal request goes through.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, reply) = post(
                &proxy.url("/v1/chat/completions"),
                br#"{"model":"m","messages":[]}"#.to_vec(),
            )
            .await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "budget not returned: {status} {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_body_sent_one_byte_a_second_is_cut_at_the_whole_body_deadline() {
        let _serial = serial().await;
        let sim = Sim::start(&["--served-model-name", SERVED]);
        let proxy =
            Proxy::start(&one_replica(&sim, SERVED).server("client_body_timeout_ms = 3000"));
        let mut s = TcpStream::connect(proxy.addr).expect("connect");
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
        )
        .expect("head");
        s.set_read_timeout(Some(Duration::from_millis(900)))
            .expect("timeout");
        let started = Instant::now();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while started.elapsed() < Duration::from_secs(12) {
            let _ = s.write_all(b" ");
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&reply);
        println!(
            "1 byte/s body answered after {elapsed:?}: {}",
            text.lines().next().unwrap_or("")
        );
        assert_eq!(status_of(&text), 408, "{text}");
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed <= Duration::from_secs(5),
            "cut after {elapsed:?}, deadline 3 s"
        );
    }

    #[tokio::test]
    async fn a_replica_passing_health_but_failing_requests_stays_out_for_its_cool_down() {
        let _serial = serial().await;
        let good = Sim::start(&["--served-model-name", SERVED, "--replica-name", "good"]);
        let bad = Sim::start(&["--served-model-name", SERVED, "--replica-name", "bad"]);
        bad.set_faults(json!({"error_status": 500})).await;
        let proxy = Proxy::start(
            &ProxyConfig::default()
                .cluster("pool", "vllm", &[good.addr, bad.addr])
                .with(&[
                    "policy = \"round-robin\"",
                    "health = { interval_ms = 100, healthy_after = 1 }",
                    "passive = { failures = 1, base_cooldown_ms = 3000, max_cooldown_ms = 3000 }",
                ])
                .model("m", "pool", SERVED),
        );
        let url = proxy.url("/v1/chat/completions");
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let started = Instant::now();
        let (mut failed, mut sent) = (0, 0);
        // Two cool-down periods with probes passing every 100 ms all along.
        while started.elapsed() < Duration::from_secs(6) {
            let (status, _, _) = post(&url, body.to_vec()).await;
            sent += 1;
            failed += usize::from(status >= 500);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("{failed} of {sent} requests failed in 6 s (cool-down 3 s)");
        // One failure ejects; one more at most when the cool-down ends and probation fails.
        assert!(failed <= 3, "{failed} failures in two cool-downs of 3 s");
    }
}
