//! The admission queue of a saturated cluster (`[[clusters]] queue = { .. }`): the real
//! binary in front of one slow simulator with `max_in_flight = 1`, so every request but one
//! waits in the queue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokengate::auth::{now_unix, KeyRegistry, NewKey};

const SERVED: &str = "sim-model";

/// A proxy over one simulator whose cluster takes one request at a time and queues the rest.
struct Setup {
    sim: Sim,
    proxy: Proxy,
    secrets: Vec<String>,
    _dir: tempfile::TempDir,
}

/// `keys`: key names to create (`vip` gets priority 3 in the keys file); `queue`: the
/// `queue = {..}` value.
fn setup(keys: &[&str], queue: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_path: PathBuf = dir.path().join("keys.toml");
    let registry = KeyRegistry::load_or_empty(&keys_path).expect("keys file");
    let secrets = keys
        .iter()
        .map(|name| {
            let key = NewKey {
                priority: if *name == "vip" { 3 } else { 0 },
                ..NewKey::named(*name)
            };
            registry.create(key, now_unix()).expect("key").0
        })
        .collect();
    let rules_path = dir.path().join("urgent.toml");
    std::fs::write(
        &rules_path,
        "[[rules]]\nname = \"urgent\"\nwhen = { field = \"header.x-urgent\", exists = true }\n\
         actions = [ { priority = 5 } ]\n",
    )
    .expect("rules file");
    let sim = Sim::start(&["--served-model-name", SERVED]);
    let proxy = Proxy::start(
        &ProxyConfig::default()
            .top(&format!("rules = [\"{}\"]", rules_path.display()))
            .cluster("pool", "vllm", &[sim.addr])
            .with(&["max_in_flight = 1", &format!("queue = {queue}")])
            .model("m", "pool", SERVED)
            .table(&format!("[auth]\nkeys_file = \"{}\"", keys_path.display())),
    );
    Setup {
        sim,
        proxy,
        secrets,
        _dir: dir,
    }
}

fn chat() -> Vec<u8> {
    json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

/// One request as key `secret` with a replica delay of `ttft_ms`; status, headers, body and
/// how long it took.
async fn send(
    s: &Setup,
    secret: &str,
    ttft_ms: u64,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value, Duration) {
    let started = Instant::now();
    let mut req = client()
        .post(s.proxy.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .header("x-sim-ttft-ms", ttft_ms.to_string())
        .body(chat());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body, started.elapsed())
}

async fn depth(s: &Setup) -> f64 {
    metric_sum(&s.proxy, "tokengate_queue_depth", &[("cluster", "pool")]).await
}

async fn wait_depth(s: &Setup, want: f64) {
    assert_eventually(
        Duration::from_secs(10),
        &format!("queue depth {want}"),
        || async move { depth(s).await == want },
    )
    .await;
}

/// Hold the cluster's only slot with a slow request; returns its task.
async fn occupy(s: &Arc<Setup>, ms: u64) -> tokio::task::JoinHandle<u16> {
    let held = {
        let s = s.clone();
        tokio::spawn(async move { send(&s, &s.secrets[0], ms, &[]).await.0 })
    };
    eventually(Duration::from_secs(5), "the slow request started", || {
        let url = s.sim.url("/sim/stats");
        async move {
            let v: Value = client().get(url).send().await.ok()?.json().await.ok()?;
            (v["in_flight"].as_u64() == Some(1)).then_some(())
        }
    })
    .await;
    held
}

mod timing {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_and_the_anthropic_shape_are_503_overloaded_with_retry_after() {
        let _serial = serial().await;
        let s = Arc::new(setup(&["a"], "{ max_depth = 1, max_wait_ms = 5000 }"));
        let held = occupy(&s, 1500).await;
        let queued = {
            let s = s.clone();
            tokio::spawn(async move { send(&s, &s.secrets[0], 0, &[]).await })
        };
        wait_depth(&s, 1.0).await;
        // The queue holds one: the next is refused at once.
        let (status, headers, body, took) = send(&s, &s.secrets[0], 0, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(assert_openai_error(&body)["code"], "overloaded");
        assert_eq!(headers["retry-after"], "1");
        assert!(
            took < Duration::from_millis(1000),
            "refused at once: {took:?}"
        );
        let full = metric_sum(
            &s.proxy,
            "tokengate_queue_rejected_total",
            &[("cluster", "pool"), ("reason", "full")],
        )
        .await;
        assert_eq!(full, 1.0);
        // Anthropic clients get their own shape.
        let r = client()
            .post(s.proxy.url("/v1/messages"))
            .header("x-api-key", &s.secrets[0])
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(
                json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "overloaded_error", "{body}");

        assert_eq!(held.await.expect("held"), 200);
        let (status, _, body, _) = queued.await.expect("queued");
        assert_eq!(
            status, 200,
            "the queued request is served once the slot frees: {body}"
        );
        wait_depth(&s, 0.0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_light_key_is_not_starved_by_a_key_sending_ten_times_more() {
        let _serial = serial().await;
        let s = Arc::new(setup(
            &["heavy", "light"],
            "{ max_depth = 100, max_wait_ms = 30000 }",
        ));
        const SERVICE_MS: u64 = 60;
        let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let spawn = |who: &'static str, secret: String| {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let (status, _, body, took) = send(&s, &secret, SERVICE_MS, &[]).await;
                order.lock().expect("order").push(who);
                assert_eq!(status, 200, "{who}: {body}");
                took
            })
        };
        let heavy: Vec<_> = (0..20)
            .map(|_| spawn("heavy", s.secrets[0].clone()))
            .collect();
        wait_depth(&s, 19.0).await;
        let light: Vec<_> = (0..2)
            .map(|_| spawn("light", s.secrets[1].clone()))
            .collect();
        let mut light_waits = Vec::new();
        for t in light {
            light_waits.push(t.await.expect("light"));
        }
        let heavy_done_before = order
            .lock()
            .expect("order")
            .iter()
            .filter(|w| **w == "heavy")
            .count();
        let mut heavy_waits = Vec::new();
        for t in heavy {
            heavy_waits.push(t.await.expect("heavy"));
        }
        heavy_waits.sort();
        println!(
            "light waits {light_waits:?}; heavy done before the light ones: {heavy_done_before}; \
             heavy p50 {:?} max {:?}",
            heavy_waits[heavy_waits.len() / 2],
            heavy_waits.last()
        );
        // FIFO would serve all 20 heavy requests first; fair queuing interleaves the light
        // key: at most the one in service plus one heavy per light request go first.
        assert!(
            heavy_done_before <= 4,
            "light key starved: {heavy_done_before} heavy requests went first"
        );
        let worst_light = light_waits.iter().max().copied().unwrap_or_default();
        assert!(
            worst_light < *heavy_waits.last().unwrap_or(&Duration::ZERO) / 2,
            "light wait {worst_light:?} bounded well below the heavy backlog's"
        );
        let waited = metric_sum(&s.proxy, "tokengate_queue_wait_seconds_count", &[]).await;
        assert!(waited >= 21.0, "queue waits observed: {waited}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_higher_priority_request_overtakes_queued_lower_ones() {
        let _serial = serial().await;
        let s = Arc::new(setup(
            &["a", "b", "vip"],
            "{ max_depth = 100, max_wait_ms = 30000 }",
        ));
        let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let held = occupy(&s, 500).await;
        let spawn = |who: &'static str, secret: String, urgent: bool| {
            let (s, order) = (s.clone(), order.clone());
            tokio::spawn(async move {
                let extra: &[(&str, &str)] = if urgent { &[("x-urgent", "1")] } else { &[] };
                let (status, _, body, _) = send(&s, &secret, 40, extra).await;
                order.lock().expect("order").push(who);
                assert_eq!(status, 200, "{who}: {body}");
            })
        };
        let low: Vec<_> = (0..5)
            .map(|_| spawn("low", s.secrets[1].clone(), false))
            .collect();
        wait_depth(&s, 5.0).await;
        // The key's own priority (3, keys file) beats the default 0; a rule's 5 beats both.
        let vip = spawn("vip", s.secrets[2].clone(), false);
        wait_depth(&s, 6.0).await;
        let high = spawn("high", s.secrets[1].clone(), true);
        wait_depth(&s, 7.0).await;
        high.await.expect("high");
        vip.await.expect("vip");
        for t in low {
            t.await.expect("low");
        }
        assert_eq!(held.await.expect("held"), 200);
        let order = order.lock().expect("order").clone();
        println!("completion order: {order:?}");
        assert_eq!(
            order[0], "high",
            "priority 5 served before priority 0: {order:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_answers_503_overloaded_with_retry_after() {
        let _serial = serial().await;
        let s = Arc::new(setup(&["a"], "{ max_depth = 10, max_wait_ms = 300 }"));
        let held = occupy(&s, 2000).await;
        let (status, headers, body, took) = send(&s, &s.secrets[0], 0, &[]).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(assert_openai_error(&body)["code"], "overloaded");
        assert_eq!(headers["retry-after"], "1");
        println!("refused after {took:?}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "waited its max_wait_ms: {took:?}"
        );
        let timeouts = metric_sum(
            &s.proxy,
            "tokengate_queue_rejected_total",
            &[("cluster", "pool"), ("reason", "timeout")],
        )
        .await;
        assert_eq!(timeouts, 1.0);
        assert_eq!(depth(&s).await, 0.0);
        assert_eq!(held.await.expect("held"), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_client_that_disconnects_leaves_the_queue_at_once() {
        let _serial = serial().await;
        let s = Arc::new(setup(&["a"], "{ max_depth = 10, max_wait_ms = 30000 }"));
        let held = occupy(&s, 3000).await;
        let gone = {
            let s = s.clone();
            tokio::spawn(async move { send(&s, &s.secrets[0], 0, &[]).await })
        };
        wait_depth(&s, 1.0).await;
        let dropped_at = Instant::now();
        gone.abort();
        let _ = gone.await;
        wait_depth(&s, 0.0).await;
        let left_after = dropped_at.elapsed();
        println!("queue depth back to 0 {left_after:?} after the client hung up");
        assert!(
            left_after < Duration::from_millis(1000),
            "left the queue at once, not at the slot or the deadline: {left_after:?}"
        );
        let closed = metric_sum(
            &s.proxy,
            "tokengate_queue_rejected_total",
            &[("cluster", "pool"), ("reason", "client_closed")],
        )
        .await;
        assert_eq!(closed, 1.0);
        assert_eq!(held.await.expect("held"), 200);
        assert_eventually(Duration::from_secs(5), "499 client_closed logged", || {
            let log = s.proxy.access_log();
            async move {
                log.iter()
                    .any(|l| l["status"] == 499 && l["error"] == "client_closed")
            }
        })
        .await;
        // The one request the replica saw is the slow one.
        assert_eq!(s.sim.requests().await.len(), 1);
    }

    /// The same over HTTP/2 (h2c, curl): a reset stream leaves the queue at once and is
    /// logged 499 `client_closed`, not answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_http2_client_that_resets_leaves_the_queue_at_once() {
        let _serial = serial().await;
        let s = Arc::new(setup(&["a"], "{ max_depth = 10, max_wait_ms = 30000 }"));
        let held = occupy(&s, 3000).await;
        let auth = format!("authorization: Bearer {}", s.secrets[0]);
        let body = String::from_utf8(chat()).expect("utf-8");
        let mut curl = std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-H", &auth])
            .args(["-H", "content-type: application/json", "-d", &body])
            .arg(s.proxy.url("/v1/chat/completions"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("curl is needed (apt-get install curl)");
        wait_depth(&s, 1.0).await;
        let killed_at = Instant::now();
        curl.kill().expect("kill curl");
        let _ = curl.wait();
        wait_depth(&s, 0.0).await;
        let left_after = killed_at.elapsed();
        println!("h2c: queue depth back to 0 {left_after:?} after the client went away");
        assert!(left_after < Duration::from_millis(1000), "{left_after:?}");
        assert_eq!(held.await.expect("held"), 200);
        assert_eventually(Duration::from_secs(5), "499 client_closed logged", || {
            let log = s.proxy.access_log();
            async move {
                log.iter()
                    .any(|l| l["status"] == 499 && l["error"] == "client_closed")
            }
        })
        .await;
    }
}
