//! The shipped Grafana dashboard (`conf/grafana/tokengate.json`): well formed, every panel
//! queries something, every metric its PromQL names exists in a live `/metrics` after traffic
//! that produces every series (histograms, refusals, retries, truncations, transitions), and
//! every query parses as PromQL (`promtool check rules`, Grafana's variables substituted).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana/tokengate.json");

/// Every PromQL text of the dashboard: panel targets and the variables' queries.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

fn metric_names(queries: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\btokengate_[a-z0-9_]+").unwrap();
    queries
        .iter()
        .flat_map(|q| re.find_iter(q).map(|m| m.as_str().to_string()))
        .collect()
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("valid JSON");
    assert_eq!(dashboard["uid"], "tokengate");
    let mut ids = HashSet::new();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        let pos = &panel["gridPos"];
        assert!(pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24);
        titles.push(panel["title"].as_str().unwrap().to_string());
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().unwrap().contains("tokengate_"),
                "{} queries no tokengate metric",
                panel["title"]
            );
        }
    }
    // The panels the issue asks for.
    for wanted in [
        "Requests / s by model",
        "Requests / s by key",
        "Tokens / s by model and kind",
        "Tokens / s by key",
        "Time to first token",
        "Inter-token latency",
        "Proxy overhead",
        "Errors tokengate answered / s by code",
        "Replica health",
        "Queue waiting per replica",
        "Rate-limit refusals / s by limit",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no panel {wanted}");
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries = queries(&dashboard);
    let wanted = metric_names(&queries);
    assert!(wanted.len() >= 15, "{wanted:?}");

    // Traffic that makes every series exist: a live replica (streams: TTFT, ITL), one that
    // cuts streams (truncations), a dead one in the same cluster as the live one with probes
    // off (connect refused, a retry), a replica whose health fails (a transition), keys
    // (per-key series) with one rate limited (a refusal), an unknown model (a local error),
    // a reload.
    let live = Sim::start(&["--served-model-name", "s", "--tokens", "6"]);
    let cutter = Sim::start(&["--served-model-name", "c", "--tokens", "6"]);
    cutter.set_faults(json!({"cut_after_tokens": 2})).await;
    let failing = Sim::start(&["--served-model-name", "f"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "").unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .cluster("pool", "vllm", &[dead_addr(), live.addr])
            .with(&[
                "health = { enabled = false }",
                "scrape = { enabled = true, interval_ms = 200 }",
            ])
            .cluster("cut", "vllm", &[cutter.addr])
            .cluster("flaky", "vllm", &[failing.addr])
            .with(&["health = { interval_ms = 100 }"])
            .model("m", "pool", "s")
            .model("cm", "cut", "c")
            .model("fm", "flaky", "f")
            .table(&format!("[auth]\nkeys_file = \"{}\"", keys.display())),
    );
    let key = |name: &str, limits: Value| {
        let proxy = &proxy;
        let body = json!({"name": name, "limits": limits});
        async move {
            let v = get_json(proxy.admin_request(Method::POST, "/admin/keys").json(&body)).await;
            v["key"].as_str().unwrap().to_string()
        }
    };
    let open = key("open", json!({})).await;
    let limited = key("limited", json!({"requests_per_minute": 1})).await;
    let chat = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "max_tokens": 6,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
    };
    let send = |secret: &str, body: String| {
        client()
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for _ in 0..6 {
        let r = send(&open, chat("m", true)).await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        let r = send(&open, chat("m", false)).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = send(&open, chat("cm", true)).await.unwrap();
    let _ = r.text().await;
    assert_eq!(
        send(&open, chat("nope", false)).await.unwrap().status(),
        404
    );
    assert_eq!(
        send(&limited, chat("m", false)).await.unwrap().status(),
        200
    );
    assert_eq!(
        send(&limited, chat("m", false)).await.unwrap().status(),
        429
    );
    failing.set_faults(json!({"health_failing": true})).await;
    let r = proxy
        .admin_request(Method::POST, "/admin/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (missing, _) = eventually(
        Duration::from_secs(10),
        "every dashboard metric in /metrics",
        || async {
            let text = reqwest::get(proxy.admin_url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let exported: HashSet<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| l.split(['{', ' ']).next())
                .collect();
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|m| !exported.contains(m.as_str()))
                .collect();
            if missing.is_empty() {
                Some(Vec::new())
            } else {
                // Retried until the deadline; the last list is in the panic below.
                eprintln!("not yet exported: {missing:?}");
                None::<Vec<String>>
            }
        },
    )
    .await;
    assert!(missing.is_empty());
    promql_parses(&queries);
}

/// `promtool check rules` on every query as a recording rule (Grafana's `$__rate_interval` and
/// `$model` replaced by what Grafana would put there).
fn promql_parses(queries: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        if q.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        let q = q.replace("$__rate_interval", "5m").replace("$model", ".*");
        text += &format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        );
    }
    std::fs::write(&rules, text).unwrap();
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("TOKENGATE_REQUIRE_PROMTOOL").is_none(),
                "promtool required but not runnable: {e}"
            );
            eprintln!("promtool not installed ({e}); tests/run-all.sh installs it");
        }
    }
}
