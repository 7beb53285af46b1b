//! Runtime replicas, clusters and aliases over the admin API (the autoscaler hook) and
//! `PUT /admin/config`: validated like the config file, applied as a reload, persisted in the
//! overlay file across restarts and reloads; a rejected change alters nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const SERVED: &str = "s";

fn one_cluster(sim: &Sim) -> ProxyConfig {
    ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("m", "pool", SERVED)
}

/// Status and JSON body of an admin call.
async fn admin(proxy: &Proxy, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = proxy.admin_request(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn config(proxy: &Proxy) -> Value {
    get_json(proxy.admin_request(Method::GET, "/admin/config")).await
}

async fn replicas_of(proxy: &Proxy, cluster: &str) -> Vec<String> {
    let c = config(proxy).await;
    let found = c["config"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .cloned()
        .unwrap_or(Value::Null);
    found["replicas"]
        .as_array()
        .map(|r| r.iter().map(|a| a.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn origin_of(config: &Value, list: &str, key: &str, name: &str) -> Value {
    config["config"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[key] == name)
        .map(|c| c["origin"].clone())
        .unwrap_or(Value::Null)
}

fn chat(model: &str, max_tokens: u64, stream: bool) -> String {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

fn overlay_path(proxy: &Proxy) -> std::path::PathBuf {
    proxy.dir.path().join("tokengate.overlay.toml")
}

#[tokio::test]
async fn runtime_changes_survive_reload_and_restart_and_show_their_origin() {
    let a = Sim::start(&["--served-model-name", SERVED]);
    let b = Sim::start(&["--served-model-name", SERVED]);
    let mut proxy = Proxy::start(&one_cluster(&a));
    let (status, v) = admin(
        &proxy,
        Method::POST,
        "/admin/clusters/pool/replicas",
        Some(json!({"address": b.addr.to_string()})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], 2);
    let (status, v) = admin(
        &proxy,
        Method::PUT,
        "/admin/models/m2",
        Some(json!({"cluster": "pool", "served_name": SERVED, "owned_by": "autoscaler"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], 3);
    let (status, v) = admin(
        &proxy,
        Method::PUT,
        "/admin/clusters/extra",
        Some(json!({"flavour": "vllm", "replicas": [a.addr.to_string()]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let check = |c: Value| {
        assert_eq!(
            origin_of(&c, "clusters", "name", "pool"),
            "file_with_overlay_replicas",
            "{c}"
        );
        assert_eq!(origin_of(&c, "clusters", "name", "extra"), "overlay", "{c}");
        assert_eq!(origin_of(&c, "models", "alias", "m"), "file", "{c}");
        assert_eq!(origin_of(&c, "models", "alias", "m2"), "overlay", "{c}");
        assert_eq!(c["overlay"]["present"], true);
    };
    check(config(&proxy).await);
    let want = vec![a.addr.to_string(), b.addr.to_string()];
    assert_eq!(replicas_of(&proxy, "pool").await, want);
    let text = std::fs::read_to_string(overlay_path(&proxy)).unwrap();
    assert!(
        text.contains(&b.addr.to_string()) && text.contains("m2"),
        "{text}"
    );
    assert!(
        !std::fs::read_to_string(&proxy.config_path)
            .unwrap()
            .contains("m2"),
        "the config file itself is not rewritten"
    );

    // A reload merges the overlay again.
    let (status, v) = admin(&proxy, Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 200, "{v}");
    check(config(&proxy).await);

    // A restart too; the runtime alias serves and the added replica is probed and used.
    proxy.restart();
    check(config(&proxy).await);
    assert_eq!(replicas_of(&proxy, "pool").await, want);
    let before_b = b.requests().await.len();
    for _ in 0..6 {
        let (status, _, v) = post(
            &proxy.url("/v1/chat/completions"),
            chat("m2", 2, false).into_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    assert!(
        b.requests().await.len() > before_b,
        "the added replica serves after a restart"
    );

    // Undo everything: the overlay ends up empty of changes, the config as the file says.
    for (method, path) in [
        (
            Method::DELETE,
            format!("/admin/clusters/pool/replicas/{}", b.addr),
        ),
        (Method::DELETE, "/admin/models/m2".to_string()),
        (Method::DELETE, "/admin/clusters/extra".to_string()),
        (Method::DELETE, "/admin/models/m".to_string()),
    ] {
        let (status, v) = admin(&proxy, method, &path, None).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
    proxy.restart();
    let c = config(&proxy).await;
    assert_eq!(replicas_of(&proxy, "pool").await, vec![a.addr.to_string()]);
    assert_eq!(c["config"]["models"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(c["overlay"]["removed_models"], json!(["m"]), "{c}");
    let (status, v) = admin(
        &proxy,
        Method::PUT,
        "/admin/models/m",
        Some(json!({"cluster": "pool", "served_name": SERVED})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        origin_of(&config(&proxy).await, "models", "alias", "m"),
        "overlay"
    );
}

#[tokio::test]
async fn invalid_runtime_changes_are_refused_with_field_errors_and_change_nothing() {
    let a = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_cluster(&a));
    let overlay = overlay_path(&proxy);
    let field_error = |v: &Value, field: &str, file_end: &str| {
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {v}"));
        assert!(
            errors.iter().any(|e| e["field"] == field
                && e["file"].as_str().unwrap().ends_with(file_end)
                && e["message"].as_str().is_some_and(|m| !m.is_empty())),
            "want {field} in {file_end}: {v}"
        );
    };
    let cases: Vec<(Method, &str, Value, &str, &str)> = vec![
        (
            Method::POST,
            "/admin/clusters/pool/replicas",
            json!({"address": "not-an-address"}),
            "clusters[0].replicas[1]",
            "tokengate.overlay.toml",
        ),
        (
            Method::PUT,
            "/admin/models/x",
            json!({"cluster": "nope"}),
            "models[1].cluster",
            "tokengate.overlay.toml",
        ),
        (
            Method::PUT,
            "/admin/clusters/c2",
            json!({"flavour": "ollama", "replicas": ["127.0.0.1:1"]}),
            "clusters[1].flavour",
            "tokengate.overlay.toml",
        ),
        (
            Method::PUT,
            "/admin/clusters/Bad Name",
            json!({"flavour": "vllm", "replicas": []}),
            "clusters[1].name",
            "tokengate.overlay.toml",
        ),
    ];
    for (method, path, body, field, file) in cases {
        let (status, v) = admin(&proxy, method, path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(assert_openai_error(&v)["code"], "invalid_config");
        field_error(&v, field, file);
    }
    // An unknown field is a TOML-shape error in the overlay, like a typo in the config file.
    let (status, v) = admin(
        &proxy,
        Method::PUT,
        "/admin/clusters/c3",
        Some(json!({"flavour": "vllm", "replicaz": []})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("replicaz"),
        "{v}"
    );
    // Removing a cluster a model still routes to.
    let (status, v) = admin(&proxy, Method::DELETE, "/admin/clusters/pool", None).await;
    assert_eq!(status, 400, "{v}");
    field_error(&v, "models[0].cluster", "tokengate.toml");
    // Not there, already there, not JSON, mismatched name.
    let dup = json!({"address": a.addr.to_string()});
    for (method, path, body, want, code) in [
        (
            Method::POST,
            "/admin/clusters/none/replicas",
            Some(dup.clone()),
            404,
            "cluster_not_found",
        ),
        (
            Method::POST,
            "/admin/clusters/pool/replicas",
            Some(dup),
            409,
            "replica_exists",
        ),
        (
            Method::DELETE,
            "/admin/clusters/pool/replicas/127.0.0.1:1",
            None,
            404,
            "replica_not_found",
        ),
        (
            Method::DELETE,
            "/admin/clusters/pool/replicas/nope",
            None,
            400,
            "invalid_replica",
        ),
        (
            Method::DELETE,
            "/admin/models/none",
            None,
            404,
            "model_not_found",
        ),
        (
            Method::PUT,
            "/admin/models/x",
            Some(json!({"alias": "y", "cluster": "pool"})),
            400,
            "name_mismatch",
        ),
        (
            Method::POST,
            "/admin/clusters/pool/replicas",
            Some(json!({"addr": "127.0.0.1:1"})),
            400,
            "invalid_json",
        ),
    ] {
        let (status, v) = admin(&proxy, method, path, body).await;
        assert_eq!(status, want, "{path}: {v}");
        assert_eq!(assert_openai_error(&v)["code"], code, "{path}");
    }
    let r = client()
        .post(proxy.admin_url("/admin/clusters/pool/replicas"))
        .json(&json!({"address": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the token is required");

    assert!(!overlay.exists(), "nothing was written");
    let c = config(&proxy).await;
    assert_eq!(c["generation"], 1, "nothing was applied: {c}");
    assert_eq!(replicas_of(&proxy, "pool").await, vec![a.addr.to_string()]);
}

#[tokio::test]
async fn concurrent_replica_additions_are_all_kept() {
    let a = Sim::start(&["--served-model-name", SERVED]);
    let proxy = std::sync::Arc::new(Proxy::start(&one_cluster(&a)));
    let addrs: Vec<SocketAddr> = (0..8).map(|_| dead_addr()).collect();
    let tasks: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let (proxy, addr) = (proxy.clone(), *addr);
            tokio::spawn(async move {
                admin(
                    &proxy,
                    Method::POST,
                    "/admin/clusters/pool/replicas",
                    Some(json!({"address": addr.to_string()})),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    let got = replicas_of(&proxy, "pool").await;
    assert_eq!(got.len(), 9, "no lost update: {got:?}");
    for addr in &addrs {
        assert!(got.contains(&addr.to_string()), "{addr} missing: {got:?}");
    }
    assert_eq!(config(&proxy).await["generation"], 9);
}

#[tokio::test]
async fn put_config_validates_like_check_and_applies_as_a_reload() {
    let a = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(&one_cluster(&a));
    let original = std::fs::read(&proxy.config_path).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let put = |body: String| {
        proxy
            .admin_request(Method::PUT, "/admin/config")
            .header("content-type", "application/toml")
            .body(body)
            .send()
    };
    // Broken TOML, then a model on a cluster that does not exist.
    let broken = format!("{text}\n[[models]\nalias = \"x\"\n");
    let unknown = format!("{text}\n[[models]]\nalias = \"x\"\ncluster = \"nope\"\n");
    for (body, field) in [(broken, ""), (unknown, "models[1].cluster")] {
        let r = put(body).await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(assert_openai_error(&v)["code"], "invalid_config");
        let e = &v["errors"][0];
        assert_eq!(e["field"], field, "{v}");
        assert_eq!(e["file"], proxy.config_path.display().to_string(), "{v}");
        assert!(
            e["line"].as_u64().is_some(),
            "located like `check` does: {v}"
        );
        assert_eq!(
            std::fs::read(&proxy.config_path).unwrap(),
            original,
            "file bytes unchanged"
        );
        assert_eq!(
            config(&proxy).await["generation"],
            1,
            "running config unchanged"
        );
    }
    // The same document `tokengate check` rejects with the same field.
    let bad_path = proxy.dir.path().join("bad.toml");
    std::fs::write(
        &bad_path,
        format!("{text}\n[[models]]\nalias = \"x\"\ncluster = \"nope\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&bad_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("models[1].cluster"),
        "{out:?}"
    );

    let good = format!(
        "{text}\n[[models]]\nalias = \"m3\"\ncluster = \"pool\"\nserved_name = \"{SERVED}\"\n"
    );
    let r = put(good.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["generation"], 2, "{v}");
    assert_eq!(std::fs::read_to_string(&proxy.config_path).unwrap(), good);
    let (status, _, body) = post(
        &proxy.url("/v1/chat/completions"),
        chat("m3", 2, false).into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        origin_of(&config(&proxy).await, "models", "alias", "m3"),
        "file"
    );
}

/// Tests bounded by health-probe intervals.
mod timing {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Streams looping until stopped; each result is (status, text).
    fn stream_load(
        url: String,
        body: String,
        tasks: usize,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
        (0..tasks)
            .map(|_| {
                let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        done.push(stream_text(&url, &body, &[]).await);
                    }
                    done
                })
            })
            .collect()
    }

    /// An added replica gets nothing until its probe passes, then takes traffic; removed under
    /// streaming load it drains: every stream it held finishes whole, and it gets no new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_added_replica_serves_after_its_first_passing_probe_and_drains_when_removed() {
        let _serial = serial().await;
        let args = ["--served-model-name", SERVED, "--itl-ms", "10"];
        let a = Sim::start(&args);
        let b = Sim::start(&args);
        b.set_faults(json!({"health_failing": true})).await;
        let proxy = Proxy::start(
            &one_cluster(&a).with(&["policy = \"round-robin\"", "health = { interval_ms = 200 }"]),
        );
        let (status, v) = admin(
            &proxy,
            Method::POST,
            "/admin/clusters/pool/replicas",
            Some(json!({"address": b.addr.to_string()})),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let id = format!("pool/{}", b.addr);
        let view = || async {
            let v = get_json(proxy.admin_request(Method::GET, "/admin/replicas")).await;
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id.as_str())
                .cloned()
                .unwrap()
        };
        assert_eq!(
            view().await["eligible"],
            false,
            "new replicas start out of rotation"
        );
        let a_id = format!("pool/{}", a.addr);
        let replicas = get_json(proxy.admin_request(Method::GET, "/admin/replicas")).await;
        let a_view = replicas["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == a_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            a_view["state"], "healthy",
            "the untouched replica kept its health: {a_view}"
        );

        // While its /health fails (5+ probe intervals) it gets none of 20 requests.
        let url = proxy.url("/v1/chat/completions");
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_millis(1200) || sent < 20 {
            let (status, _, v) = post(&url, chat("m", 2, false).into_bytes()).await;
            assert_eq!(status, 200, "{v}");
            sent += 1;
        }
        assert_eq!(
            b.requests().await.len(),
            0,
            "a replica that never passed a probe got traffic"
        );

        // Its first passing probe admits it.
        b.set_faults(json!({"health_failing": false})).await;
        let (_, took) = eventually(
            Duration::from_secs(10),
            "the added replica taking traffic",
            || async {
                let (status, _, _) = post(&url, chat("m", 2, false).into_bytes()).await;
                assert_eq!(status, 200);
                (!b.requests().await.is_empty()).then_some(())
            },
        )
        .await;
        assert_eq!(view().await["state"], "healthy");
        println!("admitted {took:?} after its /health recovered");

        // Remove it while it streams.
        let stop = Arc::new(AtomicBool::new(false));
        let load = stream_load(url.clone(), chat("m", 40, true), 6, stop.clone());
        eventually(
            Duration::from_secs(10),
            "streams in flight on the replica",
            || async { (b.stats().await["in_flight"].as_u64().unwrap_or(0) >= 1).then_some(()) },
        )
        .await;
        let (status, v) = admin(
            &proxy,
            Method::DELETE,
            &format!("/admin/clusters/pool/replicas/{}", b.addr),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let held = b.stats().await["in_flight"].as_u64().unwrap_or(0);
        assert!(held >= 1, "the removed replica held streams at removal");
        tokio::time::sleep(Duration::from_millis(100)).await; // picks made just before the swap land
        let at_removal = b.requests().await.len();
        // Keep streaming for two more stream lengths (40 tokens × 10 ms).
        tokio::time::sleep(Duration::from_millis(900)).await;
        stop.store(true, Ordering::Relaxed);
        let mut done = Vec::new();
        for t in load {
            done.extend(t.await.unwrap());
        }
        let bad: Vec<_> = done
            .iter()
            .filter(|(status, text)| {
                *status != 200
                    || !text.ends_with("data: [DONE]\n\n")
                    || text.matches("\"content\":\" ").count() != 40
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{} of {} streams failed or were truncated, e.g. {:?}",
            bad.len(),
            done.len(),
            bad.first()
        );
        assert_eq!(
            b.requests().await.len(),
            at_removal,
            "a removed replica got new requests"
        );
        assert!(!replicas_of(&proxy, "pool")
            .await
            .contains(&b.addr.to_string()));
        println!(
            "{} streams, 0 failed; {held} held by the removed replica at removal",
            done.len()
        );
    }
}
