//! Rate-limit classes end to end: a rule's `rate_limit_class` makes a request count against
//! the class's limits only, never its key's own; an unknown class is refused at load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokengate::auth::{now_unix, KeyRegistry, NewKey};

const SERVED: &str = "sim-model";

struct Setup {
    _sim: Sim,
    proxy: Proxy,
    secret: String,
    _dir: tempfile::TempDir,
}

/// One key allowed 3 requests a minute of its own; requests with `x-batch` go to class
/// `batch` (1 a minute per key, and `class_extra` for the class).
fn setup(class_extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_path = dir.path().join("keys.toml");
    let registry = KeyRegistry::load_or_empty(&keys_path).expect("keys file");
    let mut key = NewKey::named("alice");
    key.limits.requests_per_minute = Some(3);
    let (secret, _) = registry.create(key, now_unix()).expect("key");
    let rules_path = dir.path().join("batch.toml");
    std::fs::write(
        &rules_path,
        "[[rules]]\nname = \"batch\"\nwhen = { field = \"header.x-batch\", exists = true }\n\
         actions = [ { rate_limit_class = \"batch\" } ]\n",
    )
    .expect("rules file");
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(
        &one_replica(&sim, SERVED)
            .top(&format!("rules = [\"{}\"]", rules_path.display()))
            .table(&format!("[auth]\nkeys_file = \"{}\"", keys_path.display()))
            .table(&format!(
                "[rate_limit_classes.batch]\nrequests_per_minute = 1\n{class_extra}"
            )),
    );
    Setup {
        _sim: sim,
        proxy,
        secret,
        _dir: dir,
    }
}

async fn send(s: &Setup, batch: bool) -> (u16, HeaderMap, Value) {
    let mut req = client()
        .post(s.proxy.url("/v1/chat/completions"))
        .bearer_auth(&s.secret)
        .header("content-type", "application/json")
        .body(
            json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        );
    if batch {
        req = req.header("x-batch", "1");
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_batch_request_counts_against_the_class_only_and_the_key_against_its_own() {
    let s = setup("");
    // The class allows one per minute for this key: the second is refused by the class...
    let (status, headers, body) = send(&s, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let (status, headers, body) = send(&s, true).await;
    assert_eq!(status, 429, "{body}");
    let e = assert_openai_error(&body);
    let message = e["message"].as_str().unwrap_or("");
    assert!(
        message.contains("rate-limit class `batch`") && message.contains("alice"),
        "{message}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "1");
    // ...while the key's own three are untouched.
    for left in ["2", "1", "0"] {
        let (status, headers, body) = send(&s, false).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-ratelimit-limit-requests"], "3");
        assert_eq!(headers["x-ratelimit-remaining-requests"], left);
    }
    let (status, _, body) = send(&s, false).await;
    assert_eq!(status, 429, "the key's own limit: {body}");
    let message = assert_openai_error(&body)["message"].as_str().unwrap_or("");
    assert!(
        message.contains("key `alice`") && !message.contains("class"),
        "{message}"
    );
}

#[tokio::test]
async fn the_key_spending_its_own_limit_leaves_the_class_untouched() {
    let s = setup("");
    for _ in 0..3 {
        assert_eq!(send(&s, false).await.0, 200);
    }
    assert_eq!(send(&s, false).await.0, 429);
    let (status, _, body) = send(&s, true).await;
    assert_eq!(status, 200, "the class still has its request: {body}");
}

#[tokio::test]
async fn class_wide_limits_are_shared_and_named() {
    // The class as a whole takes one request a minute, whatever the key.
    let s = setup("global = { requests_per_minute = 1 }\n");
    assert_eq!(send(&s, true).await.0, 200);
    let (status, _, body) = send(&s, true).await;
    assert_eq!(status, 429, "{body}");
    let message = assert_openai_error(&body)["message"].as_str().unwrap_or("");
    assert!(message.contains("rate-limit class `batch`"), "{message}");
}

#[tokio::test]
async fn an_unknown_class_in_a_rule_is_refused_at_load_and_reload() {
    let s = setup("");
    let dir = s.proxy.dir.path();
    let rules = dir.join("unknown.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"x\"\nwhen = { always = true }\n\
         actions = [ { rate_limit_class = \"nope\" } ]\n",
    )
    .unwrap();
    let config = ProxyConfig::default()
        .cluster("pool", "vllm", &[dead_addr()])
        .model("m", "pool", SERVED)
        .top(&format!("rules = [\"{}\"]", rules.display()));
    // The running proxy keeps its config.
    s.proxy.rewrite_config(&config);
    let r = s
        .proxy
        .admin_request(reqwest::Method::POST, "/admin/reload")
        .send()
        .await
        .expect("reload");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert!(status >= 400, "reload refused: {status} {body}");
    assert!(body.contains("rate_limit_class `nope`"), "{body}");
    assert_eq!(send(&s, false).await.0, 200, "the old config still serves");
    // A fresh start is refused too.
    let out = std::process::Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&s.proxy.config_path)
        .output()
        .expect("tokengate check");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("nope"), "{text}");
}

/// Refill during the run is part of the bound: timing group.
mod timing {
    use super::*;

    /// Fleet mode: two instances share the class's buckets through Redis (names `…k:alice@batch…`
    /// and `…k:@batch…`), as they share key buckets. Two independent instances would admit
    /// 2 × 6; shared, at most C + N·(L + B) = 6 + 2·(1 + 1) (README overshoot bound).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fleet_mode_shares_class_buckets_through_redis() {
        let _serial = serial().await;
        use common::fleet::{create_key, fleet_config, keys_file, Redis};
        let redis = Redis::start();
        let sim = Sim::start(&["--served-model-name", "s"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = keys_file(dir.path());
        let rules_path = dir.path().join("batch.toml");
        std::fs::write(
            &rules_path,
            "[[rules]]\nname = \"batch\"\nwhen = { field = \"header.x-batch\", exists = true }\n\
             actions = [ { rate_limit_class = \"batch\" } ]\n",
        )
        .expect("rules file");
        let nodes: Vec<Proxy> = (0..2)
            .map(|i| {
                Proxy::start(
                    &fleet_config(&[sim.addr], &redis, &keys, &format!("node-{i}"), &[])
                        .top(&format!("rules = [\"{}\"]", rules_path.display()))
                        .table(
                            "[rate_limit_classes.batch]\nrequests_per_minute = 6\n\
                             global = { requests_per_minute = 1000 }",
                        ),
                )
            })
            .collect();
        let secret = create_key(
            &nodes[0],
            json!({"name": "alice", "limits": {"requests_per_minute": 100}}),
        )
        .await;
        let send = |node: &Proxy, batch: bool| {
            let mut req = client()
                .post(node.url("/v1/chat/completions"))
                .bearer_auth(&secret)
                .json(&json!({"model": "m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}));
            if batch {
                req = req.header("x-batch", "1");
            }
            async move { req.send().await.map_or(0, |r| r.status().as_u16()) }
        };
        // The key reaches both instances (fleet key sync) before the count starts.
        for node in &nodes {
            assert_eventually(Duration::from_secs(5), "key known", || async {
                send(node, false).await == 200
            })
            .await;
        }
        let mut admitted = 0;
        for i in 0..24 {
            let status = send(&nodes[i % 2], true).await;
            assert!(status == 200 || status == 429, "{status}");
            admitted += usize::from(status == 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("class rpm 6 on 2 instances: {admitted} of 24 admitted");
        assert!((5..=10).contains(&admitted), "admitted {admitted}");
        // The key's own bucket was not used by the batch requests.
        assert_eq!(send(&nodes[1], false).await, 200);
        let names = redis.try_cmd(&["KEYS", "*@batch*"]);
        let text = format!("{names:?}");
        assert!(text.contains("alice@batch"), "{text}");
        assert!(text.contains(":k:@batch"), "{text}");
    }
}
