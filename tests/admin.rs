//! Operating tokengate without restarts: the admin API, hot reload (admin and SIGHUP) under
//! load, /metrics and the access log.

// kill(2) on the proxy this test started: the one unsafe, to send it signals.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::Value;

fn one_cluster(sim: &Sim) -> ProxyConfig {
    ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("m", "pool", "s")
}

async fn generation(proxy: &Proxy) -> u64 {
    let v = get_json(proxy.admin_request(Method::GET, "/admin/config")).await;
    v["generation"].as_u64().expect("generation")
}

#[tokio::test]
async fn admin_requires_the_token_and_is_never_public() {
    let sim = Sim::start(&["--served-model-name", "s"]);
    let proxy = Proxy::start(&one_cluster(&sim));
    for (method, path) in [
        (Method::GET, "/admin/config"),
        (Method::POST, "/admin/reload"),
        (Method::POST, "/admin/config/validate"),
    ] {
        let r = client()
            .request(method.clone(), proxy.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} without token");
        assert_eq!(
            assert_openai_error(&r.json().await.unwrap())["code"],
            "invalid_admin_token"
        );
        let r = client()
            .request(method.clone(), proxy.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = client()
            .request(method, proxy.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the public listener");
    }
    let config = get_json(proxy.admin_request(Method::GET, "/admin/config")).await;
    assert_eq!(config["config"]["models"][0]["alias"], "m");
    assert!(
        !config.to_string().contains(ADMIN_TOKEN),
        "secrets are redacted"
    );
}

#[tokio::test]
async fn validate_checks_without_applying() {
    let sim = Sim::start(&["--served-model-name", "s"]);
    let proxy = Proxy::start(&one_cluster(&sim));
    let r = proxy
        .admin_request(Method::POST, "/admin/config/validate")
        .body("[server]\nlisten = [\"127.0.0.1:1\"]\nbogus = 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["line"], 3);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    let r = proxy
        .admin_request(Method::POST, "/admin/config/validate")
        .body("[server]\nlisten = [\"127.0.0.1:1\"]\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(generation(&proxy).await, 1, "validate never applies");
}

#[tokio::test]
async fn invalid_reload_is_rejected_by_admin_and_by_sighup() {
    let sim = Sim::start(&["--served-model-name", "s"]);
    let proxy = Proxy::start(&one_cluster(&sim));
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    let bad = good.replace("flavour = \"vllm\"", "flavour = \"nope\"\ncolour = 1");
    std::fs::write(&proxy.config_path, &bad).unwrap();

    let r = proxy
        .admin_request(Method::POST, "/admin/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{v}"
    );
    assert!(v["errors"][0]["line"].is_number());

    unsafe {
        libc::kill(proxy.pid() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(
        &proxy,
        "tokengate_config_reloads_total",
        &[("trigger", "signal"), ("result", "rejected")],
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "SIGHUP reload not attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(generation(&proxy).await, 1);
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"m","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "traffic unaffected");

    // A good file through SIGHUP is applied.
    std::fs::write(
        &proxy.config_path,
        good.replace("alias = \"m\"", "alias = \"m2\""),
    )
    .unwrap();
    unsafe {
        libc::kill(proxy.pid() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while generation(&proxy).await != 2 {
        assert!(Instant::now() < deadline, "SIGHUP reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"m2","messages":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
}

/// 100 reloads alternate two configs that move alias `m` between clusters while streaming and
/// non-streaming load runs. Each config also changes the served name, and each simulator
/// serves only its own: a request that mixed two configs would get the replica's 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_storm_under_load_loses_nothing() {
    let a = Sim::start(&["--served-model-name", "s-a", "--itl-ms", "2"]);
    let b = Sim::start(&["--served-model-name", "s-b", "--itl-ms", "2"]);
    let config = |to_a: bool| {
        ProxyConfig::default()
            .cluster("a", "vllm", &[a.addr])
            .cluster("b", "vllm", &[b.addr])
            .model(
                "m",
                if to_a { "a" } else { "b" },
                if to_a { "s-a" } else { "s-b" },
            )
    };
    let proxy = Arc::new(Proxy::start(&config(true)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (proxy, stop, done) = (proxy.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let streaming = w % 2 == 0;
                let body = format!(
                    r#"{{"messages":[{{"role":"user","content":"w{w}"}}],"max_tokens":8,"stream":{streaming},"model":"m"}}"#
                );
                let (status, text) = stream_text(&proxy.url("/v1/chat/completions"), &body, &[]).await;
                let ok = status == 200 && (!streaming || text.ends_with("data: [DONE]\n\n"));
                if !ok {
                    failures.push(format!("{status}: {text}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let admin = client();
    for i in 0..100 {
        proxy.rewrite_config(&config(i % 2 == 1));
        let r = admin
            .post(proxy.admin_url("/admin/reload"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reload {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["changes"]["models"]["changed"][0], "m");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(generation(&proxy).await, 101);
    let total = done.load(Ordering::Relaxed);
    let served = a.requests().await.len() + b.requests().await.len();
    assert_eq!(served, total, "every request reached exactly one replica");
    assert!(!a.requests().await.is_empty() && !b.requests().await.is_empty());
    assert!(total > 100, "load ran during the storm ({total} requests)");
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_exact_tokens() {
    let sim = Sim::start(&["--served-model-name", "s"]);
    let proxy = Proxy::start(&one_cluster(&sim));
    let before = metric_sum(&proxy, "tokengate_tokens_total", &[("kind", "completion")]).await;
    for (stream, n) in [(false, 5), (true, 7), (true, 11)] {
        let body = format!(r#"{{"model":"m","stream":{stream},"max_tokens":{n},"messages":[]}}"#);
        let (status, _) = stream_text(&proxy.url("/v1/chat/completions"), &body, &[]).await;
        assert_eq!(status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&proxy, "tokengate_requests_total", &[("model", "m")]).await < 3.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = metric_sum(&proxy, "tokengate_tokens_total", &[("kind", "completion")]).await;
    let truth: u64 = sim
        .requests()
        .await
        .iter()
        .map(|r| r["completion_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!((after - before) as u64, truth);
    assert_eq!(truth, 23);

    let text = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "tokengate_requests_total",
        "tokengate_request_duration_seconds",
        "tokengate_time_to_first_token_seconds",
        "tokengate_inter_token_latency_seconds",
        "tokengate_proxy_overhead_seconds",
        "tokengate_tokens_total",
        "tokengate_in_flight_requests",
        "tokengate_config_generation",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => {
            assert!(
                std::env::var_os("TOKENGATE_REQUIRE_PROMTOOL").is_none(),
                "promtool required but not runnable: {e}"
            );
            eprintln!("promtool not installed ({e}); tests/run-all.sh installs it");
        }
    }
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() {
    let sim = Sim::start(&["--served-model-name", "s"]);
    let proxy = Proxy::start(&one_cluster(&sim));
    let (status, _) = stream_text(
        &proxy.url("/v1/chat/completions"),
        r#"{"model":"m","stream":true,"max_tokens":4,"messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        br#"{"model":"zz"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = proxy.access_log();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access log lines: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ok = lines.iter().find(|l| l["status"] == 200).expect("the 200");
    assert_eq!(ok["model"], "m");
    assert_eq!(ok["cluster"], "pool");
    assert_eq!(ok["completion_tokens"], 4);
    assert_eq!(ok["usage_source"], "upstream_usage");
    assert_eq!(ok["stream"], true);
    assert!(ok["ttft_ms"].is_number());
    assert!(ok["request_id"].as_str().unwrap().starts_with("tg-"));
    let nf = lines.iter().find(|l| l["status"] == 404).expect("the 404");
    assert_eq!(nf["model"], "-");
}
