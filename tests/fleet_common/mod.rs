//! Fleet-mode harness: a real `redis-server` (Debian package) on a free 127.0.0.1 port with
//! persistence off, killed on drop, and three tokengate instances sharing it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start redis-server (Debian: apt-get install redis-server)")
}

impl Redis {
    pub fn start() -> Redis {
        // A free port can be taken between the check and the bind: retry a few.
        for _ in 0..5 {
            let port = free_port();
            let mut r = Redis {
                child: Some(spawn_redis(port)),
                port,
            };
            if r.wait_ready(Duration::from_secs(10)) {
                return r;
            }
            r.kill();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.try_cmd(&["PING"]).is_some() {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// One command; `None` when Redis does not answer within 500 ms.
    pub fn try_cmd(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        con.set_read_timeout(Some(Duration::from_millis(500)))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut con).ok()
    }

    /// Total commands Redis processed (INFO commandstats), the INFO commands excluded.
    pub fn commands_processed(&self) -> u64 {
        let Some(redis::Value::BulkString(bytes)) = self.try_cmd(&["INFO", "commandstats"]) else {
            return 0;
        };
        let text = String::from_utf8_lossy(&bytes).to_string();
        let mut total = 0;
        for line in text.lines() {
            if line.starts_with("cmdstat_info:") {
                continue;
            }
            if let Some(rest) = line.split("calls=").nth(1) {
                total += rest
                    .split(',')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh, empty Redis on the same port (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.child = Some(spawn_redis(self.port));
            if self.wait_ready(Duration::from_secs(3)) {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process ignores SIGKILL's wait until continued.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill();
    }
}

/// A keys file (empty) in its own dir.
pub fn keys_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(&path, "# keys live in Redis in fleet mode\n").expect("write keys file");
    path
}

/// One instance of a fleet on `redis`, cluster `pool` on `sims`, model `m`.
pub fn fleet_config(
    sims: &[SocketAddr],
    redis: &Redis,
    keys: &std::path::Path,
    id: &str,
    extra: &[&str],
) -> ProxyConfig {
    let mut fleet = format!(
        "[fleet]\nredis_url = \"{}\"\ninstance_id = \"{id}\"\nheartbeat_ms = 200\n",
        redis.url()
    );
    for line in extra {
        fleet.push_str(line);
        fleet.push('\n');
    }
    ProxyConfig::default()
        .cluster("pool", "vllm", sims)
        .model("m", "pool", "s")
        .table(&format!("[auth]\nkeys_file = \"{}\"", keys.display()))
        .table(&fleet)
}

pub struct Fleet {
    pub redis: Redis,
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub keys: std::path::PathBuf,
    pub nodes: Vec<Proxy>,
}

impl Fleet {
    pub fn start(n: usize, extra: &[&str]) -> Fleet {
        let redis = Redis::start();
        let sim = Sim::start(&["--served-model-name", "s"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = keys_file(dir.path());
        let nodes = (0..n)
            .map(|i| {
                Proxy::start(&fleet_config(
                    &[sim.addr],
                    &redis,
                    &keys,
                    &format!("node-{i}"),
                    extra,
                ))
            })
            .collect();
        Fleet {
            redis,
            sim,
            dir,
            keys,
            nodes,
        }
    }

    pub fn config(&self, id: &str, extra: &[&str]) -> ProxyConfig {
        fleet_config(&[self.sim.addr], &self.redis, &self.keys, id, extra)
    }

    /// Waits until every instance sees all `n` instances in the heartbeat set.
    pub async fn wait_members(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &self.nodes {
            loop {
                if metric_sum(node, "tokengate_fleet_instances", &[]).await >= n {
                    break;
                }
                assert!(Instant::now() < deadline, "instances never saw each other");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Creates a key through `node`'s admin API; returns its secret.
pub async fn create_key(node: &Proxy, body: serde_json::Value) -> String {
    let resp = node
        .admin_request(reqwest::Method::POST, "/admin/keys")
        .json(&body)
        .send()
        .await
        .expect("admin reachable");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "create: {v}");
    v["key"].as_str().expect("secret").to_string()
}

/// One small chat request with `secret`; the status.
pub async fn chat_status(client: &reqwest::Client, node: &Proxy, secret: &str) -> u16 {
    let body = serde_json::json!({
        "model": "m", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}],
    });
    match client
        .post(node.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

/// Polls until `node` answers `want` for `secret`; returns how long it took.
pub async fn until_status(
    client: &reqwest::Client,
    node: &Proxy,
    secret: &str,
    want: u16,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = chat_status(client, node, secret).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} still answers {got}, not {want}, after {:?}",
            node.addr,
            within
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
