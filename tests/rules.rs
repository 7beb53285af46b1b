//! lua-free-rules end to end: every shipped example's action seen at the simulator (rewritten
//! body, chosen cluster, headers), plus broken rule files rejected at load and at reload.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::Value;
use tokengate::auth::{now_unix, KeyRegistry, NewKey};

const LLAMA: &str = "meta-llama/Llama-3.1-8B-Instruct";
const MISTRAL: &str = "mistralai/Mistral-7B-Instruct-v0.3";

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lua-free-rules")
}

struct Setup {
    stable: Sim,
    canary: Sim,
    trt: Sim,
    proxy: Proxy,
    _keys_dir: tempfile::TempDir,
    /// name → secret
    keys: Vec<(String, String)>,
}

impl Setup {
    fn secret(&self, name: &str) -> &str {
        &self.keys.iter().find(|(n, _)| n == name).expect("key").1
    }
}

fn setup(rule_files: &[&str]) -> Setup {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_path = keys_dir.path().join("keys.toml");
    let registry = KeyRegistry::load_or_empty(&keys_path).unwrap();
    let mut keys = Vec::new();
    for (name, team, tags) in [
        ("alice", None, vec![]),
        ("intern-1", Some("interns"), vec![]),
        ("contractor-1", None, vec!["contractor".to_string()]),
        ("batch-1", None, vec!["batch".to_string()]),
        ("limited-1", None, vec![]),
    ] {
        let mut new = NewKey::named(name);
        new.team = team.map(str::to_string);
        new.tags = tags;
        if name == "limited-1" {
            new.limits.requests_per_minute = Some(1);
        }
        let (secret, _) = registry.create(new, now_unix()).unwrap();
        keys.push((name.to_string(), secret));
    }
    let stable = Sim::start(&["--served-model-name", LLAMA]);
    let canary = Sim::start(&["--served-model-name", LLAMA]);
    let trt = Sim::start(&["--flavour", "trtllm", "--served-model-name", MISTRAL]);
    let rules: Vec<String> = rule_files
        .iter()
        .map(|f| format!("\"{}\"", rules_dir().join(f).display()))
        .collect();
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .top(&format!("rules = [{}]", rules.join(", ")))
            .cluster("vllm-a", "vllm", &[stable.addr])
            .cluster("vllm-canary", "vllm", &[canary.addr])
            .cluster("trtllm-b", "trtllm", &[trt.addr])
            .model("llama-3.1-8b", "vllm-a", LLAMA)
            .model("mistral-7b", "trtllm-b", MISTRAL)
            .table(&format!("[auth]\nkeys_file = \"{}\"", keys_path.display()))
            .table("[rate_limit_classes.batch]"),
    );
    Setup {
        stable,
        canary,
        trt,
        proxy,
        _keys_dir: keys_dir,
        keys,
    }
}

async fn send(
    s: &Setup,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(s.proxy.url("/v1/chat/completions"))
        .bearer_auth(s.secret(key))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let value = r.json().await.unwrap_or(Value::Null);
    (status, headers, value)
}

fn sent_body(record: &Value) -> Value {
    serde_json::from_str(record["body"].as_str().expect("recorded body")).unwrap()
}

#[tokio::test]
async fn body_caps_and_model_denial_for_key_groups() {
    let s = setup(&["20-forbid-models.toml", "30-team-caps.toml"]);
    // Interns: max_tokens clamped to 512 and n forced to 1 by the byte-exact rewrite.
    let (status, _, body) = send(
        &s,
        "intern-1",
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"n":3,"model":"llama-3.1-8b"}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rec = s.stable.requests().await;
    let sent = sent_body(&rec[0]);
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(sent["n"], 1);
    assert_eq!(sent["messages"][0]["content"], "hi");
    // A default is added when absent.
    send(
        &s,
        "intern-1",
        r#"{"model":"llama-3.1-8b","messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(sent_body(&s.stable.requests().await[1])["max_tokens"], 256);
    // Other keys are untouched.
    send(
        &s,
        "alice",
        r#"{"model":"llama-3.1-8b","max_tokens":4000,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(sent_body(&s.stable.requests().await[2])["max_tokens"], 4000);

    // Contractors may not use mistral-7b: 403 from the rule, nothing reaches the replica.
    let (status, _, body) = send(
        &s,
        "contractor-1",
        r#"{"model":"mistral-7b","messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "model_forbidden");
    assert!(s.trt.requests().await.is_empty());
    let (status, _, _) = send(&s, "alice", r#"{"model":"mistral-7b","messages":[]}"#, &[]).await;
    assert_eq!(status, 200);

    // A rate-limit class and priority are assigned to batch keys.
    let (status, _, _) = send(
        &s,
        "batch-1",
        r#"{"model":"llama-3.1-8b","messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);

    // Tags, matched rules, class and priority reach the access log.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.proxy.access_log();
        let intern = log.iter().find(|l| l["key"] == "intern-1");
        let batch = log.iter().find(|l| l["key"] == "batch-1");
        if let (Some(line), Some(batch)) = (intern, batch) {
            assert_eq!(line["tags"][0], "capped");
            assert_eq!(line["rules"][0], "interns-max-tokens");
            assert_eq!(batch["rate_limit_class"], "batch");
            assert_eq!(batch["priority"], -10);
            assert_eq!(batch["rules"][0], "batch-keys-low-priority");
            break;
        }
        assert!(Instant::now() < deadline, "no access log line: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The access-log line of the request `x-request-id` names, polled until it is written.
async fn log_line(s: &Setup, headers: &reqwest::header::HeaderMap) -> Value {
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = s
            .proxy
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == id)
        {
            return line;
        }
        assert!(Instant::now() < deadline, "no access log line for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn locally_answered_errors_log_their_code() {
    let s = setup(&["20-forbid-models.toml"]);
    let mistral = r#"{"model":"mistral-7b","messages":[]}"#;
    let llama = r#"{"model":"llama-3.1-8b","messages":[]}"#;
    let mut cases = Vec::new();
    // 401: an unknown key.
    let r = client()
        .post(s.proxy.url("/v1/chat/completions"))
        .bearer_auth("tg-not-a-real-key")
        .body(llama)
        .send()
        .await
        .unwrap();
    let headers = r.headers().clone();
    let status = r.status().as_u16();
    cases.push((status, headers, r.json::<Value>().await.unwrap(), 401));
    // 404 model_not_found.
    let (status, headers, body) = send(&s, "alice", r#"{"model":"nope","messages":[]}"#, &[]).await;
    cases.push((status, headers, body, 404));
    // 429: the second request of a key allowed one a minute.
    let (status, _, body) = send(&s, "limited-1", llama, &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = send(&s, "limited-1", llama, &[]).await;
    cases.push((status, headers, body, 429));
    // A rule's deny.
    let (status, headers, body) = send(&s, "contractor-1", mistral, &[]).await;
    cases.push((status, headers, body, 403));

    for (status, headers, body, expected) in cases {
        assert_eq!(status, expected, "{body}");
        let code = assert_openai_error(&body)["code"]
            .as_str()
            .unwrap()
            .to_string();
        let line = log_line(&s, &headers).await;
        assert_eq!(line["status"], expected, "{line}");
        assert_eq!(line["error"], code.as_str(), "{line}");
    }
    // Counted by code in /metrics (rule denials under one bounded `rule_denied`).
    for code in ["model_not_found", "rate_limit_exceeded", "rule_denied"] {
        let n = metric_sum(&s.proxy, "tokengate_local_errors_total", &[("code", code)]).await;
        assert!(
            n >= 1.0,
            "tokengate_local_errors_total{{code={code}}} = {n}"
        );
    }
}

#[tokio::test]
async fn route_by_header_canary_split_and_header_edits() {
    let s = setup(&[
        "05-strip-client-headers.toml",
        "40-route-by-header.toml",
        "50-canary.toml",
    ]);
    // The header selects the canary; the control header is not forwarded; a response header
    // is added; client account headers are stripped.
    let (status, headers, body) = send(
        &s,
        "alice",
        r#"{"model":"llama-3.1-8b","messages":[]}"#,
        &[
            ("x-tokengate-cluster", "canary"),
            ("cookie", "session=secret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tokengate-route"], "canary (requested)");
    let rec = s.canary.requests().await;
    assert_eq!(rec.len(), 1);
    assert!(rec[0]["headers"].get("x-tokengate-cluster").is_none());
    assert!(rec[0]["headers"].get("cookie").is_none());
    assert_eq!(rec[0]["model"], LLAMA, "served name kept on the canary");

    // 10 % sticky split by key name: many distinct keys spread ~10 % to the canary, and one
    // key always lands on the same side.
    let before = s.canary.requests().await.len();
    for _ in 0..5 {
        send(
            &s,
            "alice",
            r#"{"model":"llama-3.1-8b","messages":[]}"#,
            &[],
        )
        .await;
    }
    let alice_canary = s.canary.requests().await.len() - before;
    assert!(
        alice_canary == 0 || alice_canary == 5,
        "sticky by key: {alice_canary}/5"
    );
}

#[tokio::test]
async fn oversized_prompts_are_denied_by_rule() {
    let s = setup(&["10-oversized-prompts.toml"]);
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"llama-3.1-8b"}}"#,
        "a".repeat(300 * 1024)
    );
    let (status, _, body) = send(&s, "alice", &big, &[]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(assert_openai_error(&body)["code"], "request_too_large");
    assert!(s.stable.requests().await.is_empty());
    let (status, _, _) = send(
        &s,
        "alice",
        r#"{"model":"llama-3.1-8b","messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn broken_rule_files_are_rejected_at_load_and_at_reload() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("rules.toml");
    std::fs::write(
        &good,
        "[[rules]]\nname = \"tag-all\"\nwhen = { always = true }\nactions = [ { tag = \"all\" } ]\n",
    )
    .unwrap();
    let sim = Sim::start(&["--served-model-name", LLAMA]);
    let config = ProxyConfig::default()
        .top(&format!("rules = [\"{}\"]", good.display()))
        .cluster("vllm-a", "vllm", &[sim.addr])
        .model("llama-3.1-8b", "vllm-a", LLAMA);
    let proxy = Proxy::start(&config);

    let broken = "[[rules]]\nname = \"tag-all\"\nwhen = { field = \"model\", regex = \"(\" }\nactions = [ { tagg = \"x\" } ]\n";
    std::fs::write(&good, broken).unwrap();
    // At load: `tokengate check` lists every problem with file, line and rule.
    let out = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&proxy.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("rules.toml:3"), "{text}");
    assert!(text.contains("rule `tag-all`"), "{text}");
    assert!(text.contains("tagg"), "{text}");

    // At reload: 400 with the errors; the running rules stay (requests still tagged).
    let r = proxy
        .admin_request(Method::POST, "/admin/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].as_array().unwrap().len() >= 2, "{v}");
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"llama-3.1-8b","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        metric_sum(&proxy, "tokengate_rule_tags_total", &[("tag", "all")]).await,
        1.0,
        "the old rules still run"
    );
}

#[test]
fn shipped_rule_tests_pass() {
    let out = std::process::Command::new(PROXY_BIN)
        .args(["rules", "test"])
        .arg(rules_dir())
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn shipped_configs_validate() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.toml");
    if let Err(e) = tokengate::config::load(&demo) {
        panic!("conf/demo.toml: {e}");
    }
    // The documented example names production paths: its admin token file
    // (/etc/tokengate/admin-token) need not exist here, and an unreadable one is a config
    // error, so check it the way a deployment with the token in the environment would.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/tokengate.toml");
    let out = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&example)
        .env("TOKENGATE_ADMIN_TOKEN", "check-only")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "conf/tokengate.toml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
