//! API keys and token buckets over real TCP: authentication failures (401s), model gating,
//! keys created / disabled / deleted through the admin API and surviving a restart, crash
//! safety of the keys file under SIGKILL, and the limits themselves (requests per minute,
//! token reservation and refund, concurrency caps per key, per model and for the gateway).

// kill(2) on the proxy this test started: the one unsafe, to send it signals.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tokengate::auth::{format_rfc3339, now_unix, KeyRegistry, NewKey};
use tokengate::ratelimit::KeyLimits;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A keys file in its own temp dir, created (empty but valid) before any proxy starts, at an
/// absolute path so several proxies (a restart) can share it.
struct KeysFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl KeysFile {
    fn new() -> KeysFile {
        let dir = tempfile::tempdir().expect("keys tempdir");
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "# no keys yet\n").expect("write keys file");
        KeysFile { _dir: dir, path }
    }

    /// The `[auth]` table naming this file.
    fn auth_table(&self) -> String {
        format!("[auth]\nkeys_file = \"{}\"", self.path.display())
    }

    /// Creates a key directly in the file (as `tokengate key new` would) and returns its
    /// secret. Only before the proxy starts (or followed by a reload).
    fn add(&self, new: NewKey) -> String {
        let registry = KeyRegistry::load_or_empty(&self.path).expect("keys file loads");
        let (secret, _) = registry.create(new, now_unix()).expect("key created");
        secret
    }

    /// Key names in the file as it is on disk now; panics if the file does not parse.
    fn names_on_disk(&self) -> Vec<String> {
        let registry = KeyRegistry::load(&self.path)
            .unwrap_or_else(|e| panic!("keys file must always parse, got: {e}"));
        registry.list().iter().map(|k| k.name.clone()).collect()
    }
}

/// An unrestricted key.
fn plain_key(name: &str) -> NewKey {
    NewKey::named(name)
}

/// A key with limits.
fn limited_key(name: &str, limits: KeyLimits) -> NewKey {
    NewKey {
        limits,
        ..NewKey::named(name)
    }
}

fn sim() -> Sim {
    Sim::start(&["--served-model-name", "s"])
}

/// One cluster `pool` on `sims`, model `m` served as `s`, auth from `keys`.
fn keyed_config(sims: &[&Sim], keys: &KeysFile) -> ProxyConfig {
    let addrs: Vec<_> = sims.iter().map(|s| s.addr).collect();
    ProxyConfig::default()
        .cluster("pool", "vllm", &addrs)
        .model("m", "pool", "s")
        .table(&keys.auth_table())
}

/// A small chat body for `model`.
fn chat(model: &str, max_tokens: u64) -> String {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hello there"}],
    })
    .to_string()
}

/// A client for bursts: one pool big enough that no request waits for a connection.
fn burst_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// How a key is presented.
#[derive(Clone, Copy)]
enum Present<'a> {
    None,
    Bearer(&'a str),
    XApiKey(&'a str),
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
            .parse()
            .unwrap_or_else(|_| panic!("`{name}` is not an integer: {:?}", self.headers))
    }

    fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("every answer carries x-request-id")
            .to_string()
    }

    /// The OpenAI error object, after checking the status and code.
    fn expect_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "status; body {}", self.body);
        let e = assert_openai_error(&self.body);
        assert_eq!(e["code"], code, "code; body {}", self.body);
        e
    }

    fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn with_key(mut req: reqwest::RequestBuilder, key: Present<'_>) -> reqwest::RequestBuilder {
    match key {
        Present::None => {}
        Present::Bearer(k) => req = req.bearer_auth(k),
        Present::XApiKey(k) => req = req.header("x-api-key", k),
    }
    req
}

async fn into_reply(r: reqwest::Response) -> Reply {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("response body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// `POST /v1/chat/completions` with `body`, the key and extra headers.
async fn post_chat(
    client: &reqwest::Client,
    proxy_addr: std::net::SocketAddr,
    key: Present<'_>,
    body: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut req = client
        .post(format!("http://{proxy_addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = with_key(req, key).send().await.expect("request sent");
    into_reply(r).await
}

/// `GET path` on the client listener.
async fn get(proxy: &Proxy, path: &str, key: Present<'_>) -> Reply {
    let r = with_key(client().get(proxy.url(path)), key)
        .send()
        .await
        .expect("request sent");
    into_reply(r).await
}

/// `POST /admin/keys`: returns the secret and the entry.
async fn admin_create(proxy: &Proxy, body: Value) -> (String, Value) {
    let r = proxy
        .admin_request(Method::POST, "/admin/keys")
        .json(&body)
        .send()
        .await
        .expect("admin create sent");
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("admin create json");
    assert_eq!(status, 201, "create {body}: {v}");
    let secret = v["key"].as_str().expect("secret in `key`").to_string();
    assert!(secret.starts_with("tg-"), "secret shape: {secret}");
    (secret, v["entry"].clone())
}

/// `PATCH` / `DELETE` / `GET` on `/admin/keys/{name}`; returns status and body.
async fn admin_key(proxy: &Proxy, method: Method, name: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = proxy.admin_request(method, &format!("/admin/keys/{name}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("admin request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The raw access log text (for "the secret never appears" checks).
fn access_log_text(proxy: &Proxy) -> String {
    std::fs::read_to_string(proxy.dir.path().join("access.log")).unwrap_or_default()
}

/// Waits (bounded) for the access log line of `request_id`: it is written after the request's
/// reservation was settled, so afterwards the buckets reflect the metered usage.
async fn wait_for_log_line(proxy: &Proxy, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = proxy
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {request_id} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics_text(proxy: &Proxy) -> String {
    reqwest::get(proxy.admin_url("/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Go `time.Duration` text at millisecond precision as OpenAI sends it: `120ms`, `1s`,
/// `6.596s`, `1m0s`, `1h2m3s`.
fn is_go_duration(s: &str) -> bool {
    let re =
        regex::Regex::new(r"^(0s|[1-9][0-9]{0,2}ms|([0-9]+h)?([0-9]+m)?[0-9]+(\.[0-9]{1,3})?s)$")
            .expect("regex");
    re.is_match(s) && !s.ends_with(".s")
}

/// Fires `n` copies of a chat request at once (one task each, one shared client) and returns
/// every reply.
async fn burst(
    client: &reqwest::Client,
    proxy_addr: std::net::SocketAddr,
    secret: Option<&str>,
    n: usize,
    body: &str,
) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let secret = secret.map(str::to_string);
            let body = body.to_string();
            tokio::spawn(async move {
                let key = secret.as_deref().map_or(Present::None, Present::Bearer);
                post_chat(&client, proxy_addr, key, &body, &[]).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Splits replies into (admitted, refused-with-429); anything else fails the test.
fn split_admitted(replies: Vec<Reply>) -> (Vec<Reply>, Vec<Reply>) {
    let (ok, refused): (Vec<_>, Vec<_>) = replies.into_iter().partition(|r| r.status == 200);
    for r in &refused {
        r.expect_error(429, "rate_limit_exceeded");
    }
    (ok, refused)
}

/// `Retry-After` (integer seconds ≥ 1) and `retry-after-ms` (≥ 1) agree: both round the same
/// wait up.
fn assert_retry_headers(r: &Reply) {
    let secs = r.header_u64("retry-after");
    let ms = r.header_u64("retry-after-ms");
    assert!(secs >= 1, "Retry-After ≥ 1: {:?}", r.headers);
    assert!(ms >= 1, "retry-after-ms ≥ 1: {:?}", r.headers);
    assert_eq!(
        secs,
        ms.div_ceil(1000).max(1),
        "Retry-After is retry-after-ms rounded up: {:?}",
        r.headers
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_unknown_disabled_and_expired_keys_get_401_and_secrets_never_leak() {
    let sim = sim();
    let keys = KeysFile::new();
    let alice = keys.add(plain_key("alice"));
    let bob = keys.add(plain_key("bob"));
    let proxy = Proxy::start(&keyed_config(&[&sim], &keys));
    let c = client();
    let body = chat("m", 4);

    // No key at all: on inference and on the model list.
    let r = post_chat(&c, proxy.addr, Present::None, &body, &[]).await;
    r.expect_error(401, "invalid_api_key");
    assert!(r.message().contains("API key"), "{}", r.body);
    get(&proxy, "/v1/models", Present::None)
        .await
        .expect_error(401, "invalid_api_key");

    // A key that is not ours, well-formed or not; the message never echoes it.
    let unknown = "tg-0000000000000000000000000000000000000000000";
    for presented in [unknown, "sk-garbage", "tg-"] {
        let r = post_chat(&c, proxy.addr, Present::Bearer(presented), &body, &[]).await;
        r.expect_error(401, "invalid_api_key");
        assert!(
            !r.body.to_string().contains(presented),
            "the presented key is never echoed: {}",
            r.body
        );
    }
    post_chat(&c, proxy.addr, Present::XApiKey(unknown), &body, &[])
        .await
        .expect_error(401, "invalid_api_key");
    // A valid key under a non-Bearer scheme is not accepted as Bearer.
    let r = c
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Basic {alice}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    into_reply(r).await.expect_error(401, "invalid_api_key");

    // Both ways of presenting a good key work.
    let mut served = Vec::new(); // request ids of the 200s
    let r = post_chat(&c, proxy.addr, Present::Bearer(&alice), &body, &[]).await;
    assert_eq!(r.status, 200, "Bearer: {}", r.body);
    served.push(r.request_id());
    let r = post_chat(&c, proxy.addr, Present::XApiKey(&alice), &body, &[]).await;
    assert_eq!(r.status, 200, "x-api-key: {}", r.body);
    served.push(r.request_id());
    assert_eq!(
        sim.requests().await.len(),
        2,
        "only admitted requests reach a replica"
    );

    // Disabled through the admin API: refused at once, naming the key.
    let r = post_chat(&c, proxy.addr, Present::Bearer(&bob), &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    served.push(r.request_id());
    let (status, view) = admin_key(
        &proxy,
        Method::PATCH,
        "bob",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "disabled");
    let r = post_chat(&c, proxy.addr, Present::Bearer(&bob), &body, &[]).await;
    r.expect_error(401, "api_key_disabled");
    assert!(
        r.message().contains("`bob`") && r.message().contains("disabled"),
        "message names the key: {}",
        r.body
    );
    get(&proxy, "/v1/models", Present::XApiKey(&bob))
        .await
        .expect_error(401, "api_key_disabled");
    // And back on.
    let (status, _) = admin_key(&proxy, Method::PATCH, "bob", Some(json!({"enabled": true}))).await;
    assert_eq!(status, 200);
    let r = post_chat(&c, proxy.addr, Present::Bearer(&bob), &body, &[]).await;
    assert_eq!(r.status, 200, "re-enabled key works on the next request");
    served.push(r.request_id());

    // Expiring: works until `expires_at`, refused from then on.
    let at = now_unix() + 2;
    let (carol, entry) = admin_create(
        &proxy,
        json!({"name": "carol", "expires_at": format_rfc3339(at)}),
    )
    .await;
    assert_eq!(entry["status"], "active");
    let r = post_chat(&c, proxy.addr, Present::Bearer(&carol), &body, &[]).await;
    assert_eq!(r.status, 200, "before expiry: {}", r.body);
    served.push(r.request_id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while now_unix() < at {
        assert!(Instant::now() < deadline, "clock did not reach expires_at");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No extra sleep: the key is expired from `expires_at` on (`now >= at`), by the same clock.
    let r = post_chat(&c, proxy.addr, Present::Bearer(&carol), &body, &[]).await;
    r.expect_error(401, "api_key_expired");
    assert!(
        r.message().contains("`carol`") && r.message().contains("expired"),
        "{}",
        r.body
    );
    let (_, view) = admin_key(&proxy, Method::GET, "carol", None).await;
    assert_eq!(view["status"], "expired");

    // Logs and metrics carry key names, never secrets.
    let mut ok_keys = Vec::new();
    for id in &served {
        let line = wait_for_log_line(&proxy, id).await;
        assert_eq!(line["status"], 200);
        ok_keys.push(line["key"].as_str().unwrap_or("?").to_string());
    }
    assert_eq!(
        ok_keys.iter().filter(|k| *k == "alice").count(),
        2,
        "{ok_keys:?}"
    );
    assert_eq!(ok_keys.iter().filter(|k| *k == "bob").count(), 2);
    assert_eq!(ok_keys.iter().filter(|k| *k == "carol").count(), 1);
    let log = access_log_text(&proxy);
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("key=\"alice\""),
        "usage metrics by key name"
    );
    for secret in [alice.as_str(), bob.as_str(), carol.as_str(), unknown] {
        let body_of_secret = &secret[3..];
        assert!(
            !log.contains(body_of_secret),
            "a secret appears in the access log"
        );
        assert!(
            !metrics.contains(body_of_secret),
            "a secret appears in /metrics"
        );
    }
    // The keys file stores hashes only.
    let on_disk = std::fs::read_to_string(&keys.path).unwrap();
    for secret in [&alice, &bob, &carol] {
        assert!(!on_disk.contains(&secret[3..]), "a secret in the keys file");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Model gating
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_limited_to_some_models_sees_the_others_as_missing() {
    let sim = sim();
    let keys = KeysFile::new();
    let only_a = keys.add(NewKey {
        models: vec!["a".into()],
        ..NewKey::named("only-a")
    });
    let all = keys.add(plain_key("all"));
    let config = ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("a", "pool", "s")
        .model("b", "pool", "s")
        .table(&keys.auth_table());
    let proxy = Proxy::start(&config);
    let c = client();

    let r = post_chat(&c, proxy.addr, Present::Bearer(&only_a), &chat("a", 4), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // `b` exists, but this key may not use it: answered exactly like a missing model.
    let r = post_chat(&c, proxy.addr, Present::Bearer(&only_a), &chat("b", 4), &[]).await;
    r.expect_error(404, "model_not_found");
    let missing = post_chat(
        &c,
        proxy.addr,
        Present::Bearer(&only_a),
        &chat("nope", 4),
        &[],
    )
    .await;
    missing.expect_error(404, "model_not_found");
    assert_eq!(
        r.message().replace("`b`", "`X`"),
        missing.message().replace("`nope`", "`X`"),
        "a forbidden model reads like a missing one"
    );
    assert_eq!(
        sim.requests().await.len(),
        1,
        "the refused ones never reach a replica"
    );

    let list = get(&proxy, "/v1/models", Present::Bearer(&only_a)).await;
    assert_eq!(list.status, 200);
    let ids: Vec<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(ids, ["a"], "{}", list.body);
    get(&proxy, "/v1/models/b", Present::Bearer(&only_a))
        .await
        .expect_error(404, "model_not_found");
    assert_eq!(
        get(&proxy, "/v1/models/a", Present::Bearer(&only_a))
            .await
            .status,
        200
    );

    // An unrestricted key sees and uses both.
    let list = get(&proxy, "/v1/models", Present::Bearer(&all)).await;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(2));
    let r = post_chat(&c, proxy.addr, Present::Bearer(&all), &chat("b", 4), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// ---------------------------------------------------------------------------------------------
// 3. Admin lifecycle and restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_created_keys_work_at_once_survive_a_restart_and_die_on_delete() {
    let sim = sim();
    let keys = KeysFile::new();
    let config = keyed_config(&[&sim], &keys);
    let body = chat("m", 4);
    let c = client();

    let (secret, entry) = {
        let proxy = Proxy::start(&config);
        let (secret, entry) = admin_create(
            &proxy,
            json!({"name": "svc", "team": "platform", "tags": ["ci"],
                   "limits": {"requests_per_minute": 1000}}),
        )
        .await;
        assert_eq!(entry["name"], "svc");
        assert_eq!(entry["team"], "platform");
        assert_eq!(entry["limits"]["requests_per_minute"], 1000);
        assert!(entry.get("hash").is_none(), "no hash in views: {entry}");
        // The very next request.
        let r = post_chat(&c, proxy.addr, Present::Bearer(&secret), &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("1000"));
        // Listed without its secret.
        let list = get_json(proxy.admin_request(Method::GET, "/admin/keys")).await;
        assert_eq!(list["data"][0]["name"], "svc");
        assert!(!list.to_string().contains(&secret[3..]));
        // A duplicate name is refused.
        let r = proxy
            .admin_request(Method::POST, "/admin/keys")
            .json(&json!({"name": "svc"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        (secret, entry)
        // The proxy is killed here.
    };
    assert_eq!(keys.names_on_disk(), ["svc"], "written to the keys file");

    let proxy = Proxy::start(&config);
    let r = post_chat(&c, proxy.addr, Present::Bearer(&secret), &body, &[]).await;
    assert_eq!(r.status, 200, "the key survives a restart: {}", r.body);
    let (status, view) = admin_key(&proxy, Method::GET, "svc", None).await;
    assert_eq!(status, 200);
    assert_eq!(view["prefix"], entry["prefix"]);
    assert_eq!(view["created_at"], entry["created_at"]);

    let (status, v) = admin_key(&proxy, Method::DELETE, "svc", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deleted"], "svc");
    let r = post_chat(&c, proxy.addr, Present::Bearer(&secret), &body, &[]).await;
    r.expect_error(401, "invalid_api_key");
    let (status, _) = admin_key(&proxy, Method::GET, "svc", None).await;
    assert_eq!(status, 404);
    let (status, _) = admin_key(&proxy, Method::DELETE, "svc", None).await;
    assert_eq!(status, 404);
    assert!(keys.names_on_disk().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. Crash safety of the keys file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_admin_writes_leaves_a_valid_keys_file_with_every_acknowledged_key() {
    let sim = sim();
    let keys = KeysFile::new();
    let config = keyed_config(&[&sim], &keys);
    let mut previous: Option<(String, String)> = None; // (name, secret) acknowledged last round
    let mut on_disk_before: BTreeSet<String> = BTreeSet::new();

    for round in 0..4u32 {
        let proxy = Proxy::start(&config);
        // The file left by the previous crash loads, and its last acknowledged key works.
        if let Some((name, secret)) = &previous {
            let r = post_chat(
                &client(),
                proxy.addr,
                Present::Bearer(secret),
                &chat("m", 2),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "key {name} after the crash: {}", r.body);
        }

        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let writer = {
            let acked = acked.clone();
            let url = proxy.admin_url("/admin/keys");
            tokio::spawn(async move {
                let c = client();
                for i in 0..100_000u32 {
                    let name = format!("r{round}-k{i}");
                    let sent = c
                        .post(&url)
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"name": name, "tags": ["crash-test"]}))
                        .send()
                        .await;
                    let Ok(r) = sent else { return };
                    if r.status().as_u16() != 201 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        return;
                    };
                    let secret = v["key"].as_str().unwrap_or_default().to_string();
                    acked.lock().unwrap().push((name, secret));
                }
            })
        };

        // Let some writes land, then kill at a point that varies per round.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < 5 + 3 * round as usize {
            assert!(Instant::now() < deadline, "admin writes too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..20_000))).await;
        let rc = unsafe { libc::kill(proxy.pid() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "SIGKILL sent");
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("writer stops once the proxy is gone")
            .expect("writer task");
        drop(proxy); // reaps the process: nothing can write the file any more

        let acked = acked.lock().unwrap().clone();
        let names = keys.names_on_disk();
        let all: BTreeSet<String> = names.iter().cloned().collect();
        assert!(
            on_disk_before.is_subset(&all),
            "round {round}: keys from earlier rounds lost"
        );
        let this_round: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(&format!("r{round}-")))
            .collect();
        let expected_prefix: BTreeSet<String> = (0..this_round.len())
            .map(|i| format!("r{round}-k{i}"))
            .collect();
        let got: BTreeSet<String> = this_round.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            got, expected_prefix,
            "round {round}: the file holds a prefix of the created keys"
        );
        assert!(
            this_round.len() == acked.len() || this_round.len() == acked.len() + 1,
            "round {round}: {} acknowledged, {} on disk (only the one in flight may differ)",
            acked.len(),
            this_round.len()
        );
        for (name, _) in &acked {
            assert!(
                all.contains(name),
                "round {round}: acknowledged {name} lost"
            );
        }
        eprintln!(
            "crash round {round}: {} keys acknowledged, {} on disk",
            acked.len(),
            this_round.len()
        );
        on_disk_before = all;
        previous = acked.last().cloned();
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Concurrency per key
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_caps_what_reaches_the_replicas() {
    let sim = Sim::start(&["--served-model-name", "s", "--itl-ms", "20"]);
    let keys = KeysFile::new();
    let secret = keys.add(limited_key(
        "conc",
        KeyLimits {
            max_concurrent: Some(10),
            ..KeyLimits::default()
        },
    ));
    let proxy = Proxy::start(&keyed_config(&[&sim], &keys));
    let c = burst_client();
    let body = chat("m", 10); // ~180 ms each at 20 ms per token

    let started = Instant::now();
    let replies = burst(&c, proxy.addr, Some(&secret), 1_000, &body).await;
    let took = started.elapsed();
    let (ok, refused) = split_admitted(replies);
    let stats = sim.stats().await;
    let peak = stats["peak_in_flight"].as_u64().expect("peak_in_flight");
    eprintln!(
        "concurrency: {} admitted, {} refused, simulator peak in flight {peak}, {took:?}",
        ok.len(),
        refused.len()
    );
    assert!(
        peak <= 10,
        "simulator saw {peak} in flight under max_concurrent = 10"
    );
    assert!(peak >= 2, "the burst did overlap: peak {peak}");
    assert!(
        ok.len() >= 10,
        "at least one full wave admitted: {}",
        ok.len()
    );
    assert_eq!(ok.len() + refused.len(), 1_000);
    for r in &refused {
        let m = r.message();
        assert!(
            m.contains("oncurren") && m.contains("`conc`") && m.contains("10"),
            "message names the concurrency limit: {m}"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_retry_headers(r);
    }
    // Slots are released: once the burst is over and settled (logging runs just after the
    // last byte), 10 at once all pass.
    eventually(Duration::from_secs(10), "every slot given back", || async {
        let (ok, _) = split_admitted(burst(&c, proxy.addr, Some(&secret), 10, &body).await);
        (ok.len() == 10).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Per-model and global limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_model_max_concurrent_applies_to_every_caller() {
    let sim = Sim::start(&["--served-model-name", "s", "--itl-ms", "20"]);
    // No [auth]: model limits work without keys. `capped` limited, `free` not.
    let config = ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("free", "pool", "s")
        .table(
            "[[models]]\nalias = \"capped\"\ncluster = \"pool\"\nserved_name = \"s\"\n\
             limits = { max_concurrent = 2 }",
        );
    let proxy = Proxy::start(&config);
    let c = burst_client();

    let replies = burst(&c, proxy.addr, None, 40, &chat("capped", 10)).await;
    let (ok, refused) = split_admitted(replies);
    let peak = sim.stats().await["peak_in_flight"].as_u64().unwrap();
    eprintln!(
        "model cap: {} admitted, {} refused, peak {peak}",
        ok.len(),
        refused.len()
    );
    assert!(peak <= 2, "model max_concurrent = 2, simulator peak {peak}");
    assert!(!refused.is_empty() && ok.len() >= 2);
    for r in &refused {
        let m = r.message();
        assert!(
            m.contains("model `capped`") && m.contains("oncurren"),
            "{m}"
        );
    }

    // The uncapped model is not limited by its neighbour's cap.
    let replies = burst(&c, proxy.addr, None, 8, &chat("free", 10)).await;
    let (ok, _) = split_admitted(replies);
    assert_eq!(ok.len(), 8, "uncapped model admits all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_requests_per_minute_spans_keys_and_models() {
    let sim = sim();
    let keys = KeysFile::new();
    let k1 = keys.add(plain_key("one"));
    let k2 = keys.add(plain_key("two"));
    let config = ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("m", "pool", "s")
        .model("n", "pool", "s")
        .table(&keys.auth_table())
        .table("[limits]\nglobal = { requests_per_minute = 6 }");
    let proxy = Proxy::start(&config);
    let c = burst_client();

    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let secret = if i % 2 == 0 { k1.clone() } else { k2.clone() };
        let model = if i % 4 < 2 { "m" } else { "n" };
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            post_chat(&c, addr, Present::Bearer(&secret), &chat(model, 2), &[]).await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let (ok, refused) = split_admitted(replies);
    eprintln!("global rpm: {} of 20 admitted", ok.len());
    assert!(
        (6..=7).contains(&ok.len()),
        "global requests_per_minute = 6 across two keys and two models, admitted {}",
        ok.len()
    );
    for r in &refused {
        let m = r.message();
        assert!(
            m.contains("this gateway") && m.contains("requests per minute"),
            "{m}"
        );
        assert_retry_headers(r);
    }
    assert_eq!(sim.requests().await.len(), ok.len());
}

/// Tests whose assertions hang on refill rates over wall-clock windows: run alone and one at
/// a time (see tests/common: `serial`).
mod timing {
    use super::*;

    // ---------------------------------------------------------------------------------------------
    // 5. Requests per minute
    // ---------------------------------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_per_minute_admits_exactly_the_limit_then_refills_one_per_second() {
        let _serial = serial().await;
        let sim = sim();
        let keys = KeysFile::new();
        let rpm = KeyLimits {
            requests_per_minute: Some(60),
            ..KeyLimits::default()
        };
        let burst_key = keys.add(limited_key("burst", rpm));
        let probe_key = keys.add(limited_key("probe", rpm));
        let proxy = Proxy::start(&keyed_config(&[&sim], &keys));
        let c = burst_client();
        let body = chat("m", 2);

        // A fresh bucket: the first answer's headers are exact.
        let first = post_chat(&c, proxy.addr, Present::Bearer(&probe_key), &body, &[]).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.header("x-ratelimit-limit-requests"), Some("60"));
        assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("59"));
        assert_eq!(first.header("x-ratelimit-reset-requests"), Some("1s"));
        assert_eq!(
            first.header("x-ratelimit-limit-tokens"),
            None,
            "no token headers without a token limit"
        );

        // 200 at once. The bucket refills one per second, so a burst that itself takes longer
        // than a second (a loaded machine) may see one more per second it took.
        let burst_started = std::time::Instant::now();
        let replies = burst(&c, proxy.addr, Some(&burst_key), 200, &body).await;
        let burst_secs = burst_started.elapsed().as_secs() as usize;
        let burst_ended = Instant::now();
        let (ok, refused) = split_admitted(replies);
        eprintln!(
            "rpm burst: {} admitted, {} refused",
            ok.len(),
            refused.len()
        );
        assert!(
            (60..=61 + burst_secs).contains(&ok.len()),
            "60 of 200 admitted (±1, plus refill during a {burst_secs} s burst), got {}",
            ok.len()
        );
        for r in &ok {
            assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
            let remaining = r.header_u64("x-ratelimit-remaining-requests");
            assert!(remaining < 60, "remaining {remaining}");
            let reset = r.header("x-ratelimit-reset-requests").expect("reset");
            assert!(is_go_duration(reset), "reset `{reset}` is Go-style");
        }
        let remainings: BTreeSet<u64> = ok
            .iter()
            .map(|r| r.header_u64("x-ratelimit-remaining-requests"))
            .collect();
        assert!(
            remainings.contains(&59) && remainings.contains(&0),
            "{remainings:?}"
        );
        for r in &refused {
            assert_eq!(r.body["error"]["type"], "requests", "{}", r.body);
            let m = r.message();
            assert!(
                m.contains("requests per minute")
                    && m.contains("`burst`")
                    && m.contains("limit 60"),
                "message names the limit: {m}"
            );
            assert_retry_headers(r);
            assert!(
                r.header_u64("retry-after-ms") <= 1_000,
                "one request refills in 1 s"
            );
            assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
            assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
        }
        assert_eq!(
            sim.requests().await.len(),
            1 + ok.len(),
            "refused requests never reach a replica"
        );

        // One more per second: after a window of 1.1 s at least one, at most one per second
        // since the bucket was emptied (the window plus whatever the checks above took).
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let replies = burst(&c, proxy.addr, Some(&burst_key), 5, &body).await;
        let refill_secs = burst_ended.elapsed().as_secs_f64().ceil() as usize;
        let (ok, _) = split_admitted(replies);
        eprintln!(
            "rpm after {:?}: {} of 5 admitted",
            burst_ended.elapsed(),
            ok.len()
        );
        assert!(
            (1..=1 + refill_secs).contains(&ok.len()),
            "one request per second refilled over {refill_secs} s, got {}",
            ok.len()
        );

        // The other key's bucket is its own.
        let r = post_chat(&c, proxy.addr, Present::Bearer(&probe_key), &body, &[]).await;
        assert_eq!(r.status, 200);
        let remaining = r.header_u64("x-ratelimit-remaining-requests");
        assert!(
            remaining >= 58,
            "probe key unaffected by the burst: remaining {remaining}"
        );
    }

    // ---------------------------------------------------------------------------------------------
    // 6. Token reservation, refund and exact streamed charge
    // ---------------------------------------------------------------------------------------------

    #[tokio::test]
    async fn tokens_are_reserved_up_front_then_settled_to_the_metered_usage() {
        let _serial = serial().await;
        const TPM: u64 = 100_000;
        // A small request's usage (< 200 tokens) refills in 0.12 s at 1667 tokens/s: wait 3x.
        const SMALL_REFILL: Duration = Duration::from_millis(400);
        let sim = sim();
        let keys = KeysFile::new();
        let secret = keys.add(limited_key(
            "tok",
            KeyLimits {
                tokens_per_minute: Some(TPM),
                ..KeyLimits::default()
            },
        ));
        let proxy = Proxy::start(&keyed_config(&[&sim], &keys));
        let c = client();
        let key = Present::Bearer(&secret);
        let small = chat("m", 1);

        // A small request on a full bucket: its estimate is exactly what the header shows gone.
        let r0 = post_chat(&c, proxy.addr, key, &small, &[]).await;
        assert_eq!(r0.status, 200, "{}", r0.body);
        assert_eq!(r0.header("x-ratelimit-limit-tokens"), Some("100000"));
        assert_eq!(
            r0.header("x-ratelimit-limit-requests"),
            None,
            "no rpm limit set"
        );
        let reset = r0.header("x-ratelimit-reset-tokens").expect("reset-tokens");
        assert!(is_go_duration(reset), "{reset}");
        let small_estimate = TPM - r0.header_u64("x-ratelimit-remaining-tokens");
        assert!(
            (1..200).contains(&small_estimate),
            "estimate of a small request: {small_estimate}"
        );
        wait_for_log_line(&proxy, &r0.request_id()).await;
        tokio::time::sleep(SMALL_REFILL).await;

        // max_tokens = 5000 but the model stops after 10: 5000 (+ prompt) reserved...
        let big = chat("m", 5_000);
        let r1 = post_chat(&c, proxy.addr, key, &big, &[("x-sim-tokens", "10")]).await;
        assert_eq!(r1.status, 200, "{}", r1.body);
        assert_eq!(r1.body["usage"]["completion_tokens"], 10);
        let after_reservation = r1.header_u64("x-ratelimit-remaining-tokens");
        assert!(
            after_reservation <= TPM - 5_000,
            "the reservation covers max_tokens: remaining {after_reservation}"
        );
        let line = wait_for_log_line(&proxy, &r1.request_id()).await;
        assert_eq!(line["key"], "tok");
        assert_eq!(line["completion_tokens"], 10);
        // ...and refunded down to the real usage: the next request sees (nearly) a full bucket.
        let r2 = post_chat(&c, proxy.addr, key, &small, &[]).await;
        assert_eq!(r2.status, 200);
        let after_refund = r2.header_u64("x-ratelimit-remaining-tokens");
        eprintln!(
        "tokens: reserved → remaining {after_reservation}; after refund → remaining {after_refund}"
    );
        assert!(
            after_refund + 100 >= TPM - small_estimate,
            "refund: remaining {after_refund}, expected about {} (without refund about {})",
            TPM - small_estimate,
            after_reservation - small_estimate
        );
        wait_for_log_line(&proxy, &r2.request_id()).await;
        tokio::time::sleep(SMALL_REFILL).await;

        // A stream: exactly its metered usage (prompt + completion) is charged, not the
        // reservation. A 2000-word prompt (2003 tokens as the replica counts them, ~2500 as the
        // proxy estimates them) and 6000 completion tokens of 20000 allowed; the refill (100000/min
        // ≈ 1667/s) is bounded by the elapsed time.
        let started = Instant::now();
        let prompt = "word ".repeat(2_000);
        let stream_body = json!({
            "model": "m", "stream": true, "max_tokens": 20_000,
            "messages": [{"role": "user", "content": prompt}],
        })
        .to_string();
        let mut req = c
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-sim-tokens", "6000")
            .bearer_auth(&secret)
            .body(stream_body);
        req = req.timeout(Duration::from_secs(30));
        let resp = req.send().await.expect("stream sent");
        assert_eq!(resp.status(), 200);
        let stream_reserved = resp
            .headers()
            .get("x-ratelimit-remaining-tokens")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("remaining tokens on a stream");
        assert!(stream_reserved <= TPM - 20_000, "{stream_reserved}");
        let stream_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("request id")
            .to_string();
        let text = resp.text().await.expect("stream body");
        assert!(text.contains("data: [DONE]"), "stream completed");
        let line = wait_for_log_line(&proxy, &stream_id).await;
        assert_eq!(line["completion_tokens"], 6_000, "{line}");
        assert_eq!(
            line["prompt_tokens"], 2_003,
            "the replica's own count: {line}"
        );
        let charged = line["prompt_tokens"].as_u64().expect("prompt tokens")
            + line["completion_tokens"]
                .as_u64()
                .expect("completion tokens");
        let r3 = post_chat(&c, proxy.addr, key, &small, &[]).await;
        let elapsed = started.elapsed();
        assert_eq!(r3.status, 200);
        let remaining = r3.header_u64("x-ratelimit-remaining-tokens");
        let exact = TPM - charged - small_estimate;
        let refill_bound = (TPM as f64 * elapsed.as_secs_f64() / 60.0).ceil() as u64 + 1;
        eprintln!(
            "stream: charged {charged}, next remaining {remaining}, expected {exact}..={} \
         ({elapsed:?})",
            exact + refill_bound
        );
        // Charging nothing would leave `charged` more tokens; the refill window must stay
        // smaller than that to tell the two apart (8003 tokens: 4.8 s, typically 10x the time).
        assert!(
            refill_bound < charged,
            "too slow for the refill bound to tell charges apart: {elapsed:?}"
        );
        assert!(
            remaining >= exact && remaining <= exact + refill_bound,
            "after a stream metered at {charged} tokens the bucket shows {remaining}, expected \
         {exact}..={} (charging the 20000 estimate would show ~{}, charging nothing ~{})",
            exact + refill_bound,
            TPM - 20_000 - small_estimate,
            TPM - small_estimate
        );
    }
}
