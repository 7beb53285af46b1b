//! Fleet-mode harness: real `redis-server`s (Debian package) on free 127.0.0.1 ports with
//! persistence off, killed on drop — a standalone server, one over TLS (CA and server
//! certificate made with the openssl CLI), or a three-node Redis Cluster — and tokengate
//! instances sharing them. A missing `redis-server`, `redis-cli` or `openssl` fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// How a `redis-server` is started.
#[derive(Clone)]
enum Mode {
    Plain,
    /// `--port 0 --tls-port`: TLS only, with this server certificate; `true`: clients must
    /// present a certificate the test CA signed.
    Tls(TlsFiles, bool),
    /// A cluster node: its `nodes.conf` in this dir, its bus on this port.
    ClusterNode(PathBuf, u16),
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    mode: Mode,
}

fn spawn_redis(port: u16, mode: &Mode) -> Child {
    let mut cmd = Command::new("redis-server");
    match mode {
        Mode::Plain => cmd.args(["--port", &port.to_string()]),
        Mode::Tls(tls, client_auth) => cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&tls.server_cert)
            .arg("--tls-key-file")
            .arg(&tls.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .args([
                "--tls-auth-clients",
                if *client_auth { "yes" } else { "no" },
            ]),
        Mode::ClusterNode(dir, bus) => cmd
            .args(["--port", &port.to_string(), "--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus.to_string()])
            // A dead node fails the cluster after 1 s, not the default 15.
            .args(["--cluster-node-timeout", "1000"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(dir),
    };
    cmd.args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--protected-mode", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start redis-server (Debian: apt-get install redis-server)")
}

/// A test CA, a server certificate it signed for 127.0.0.1 and localhost, a client
/// certificate it signed, and a second CA that signed nothing (the wrong one).
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    pub fn make(dir: &Path) -> TlsFiles {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "tokengate test CA"), ("other-ca", "some other CA")] {
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(dir, &args);
        }
        for (name, cn, san, usage) in [
            (
                "server",
                "localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
                "serverAuth",
            ),
            ("client", "tokengate", "", "clientAuth"),
        ] {
            let (key, csr, ext, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.ext"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &args);
            std::fs::write(
                dir.join(&ext),
                format!(
                    "{san}basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                     extendedKeyUsage={usage}\n"
                ),
            )
            .expect("write ext");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        TlsFiles {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// What a tokengate `[fleet]` section needs to reach a store.
pub trait Store {
    /// The connection lines of `[fleet]` (`redis_url`, and `ca_file` or `redis_cluster`).
    fn fleet_lines(&self) -> String;
}

/// Hand-written connection lines.
impl Store for String {
    fn fleet_lines(&self) -> String {
        self.clone()
    }
}

impl Store for Redis {
    fn fleet_lines(&self) -> String {
        match &self.mode {
            Mode::Tls(tls, client_auth) => {
                let mut lines = format!(
                    "redis_url = \"{}\"\nca_file = \"{}\"",
                    self.url(),
                    tls.ca.display()
                );
                if *client_auth {
                    lines += &format!(
                        "\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                        tls.client_cert.display(),
                        tls.client_key.display()
                    );
                }
                lines
            }
            _ => format!("redis_url = \"{}\"", self.url()),
        }
    }
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_as(&|_| Mode::Plain)
    }

    /// A TLS-only server with `tls`'s certificate.
    pub fn start_tls(tls: &TlsFiles) -> Redis {
        Redis::start_as(&|_| Mode::Tls(tls.clone(), false))
    }

    /// A TLS-only server that also requires a client certificate (`tls-auth-clients yes`).
    pub fn start_mutual_tls(tls: &TlsFiles) -> Redis {
        Redis::start_as(&|_| Mode::Tls(tls.clone(), true))
    }

    fn start_as(mode: &dyn Fn(u16) -> Mode) -> Redis {
        // A free port can be taken between the check and the bind: retry a few.
        for _ in 0..5 {
            let port = free_port();
            let mode = mode(port);
            let mut r = Redis {
                child: Some(spawn_redis(port, &mode)),
                port,
                mode,
            };
            if r.wait_ready(Duration::from_secs(10)) {
                return r;
            }
            r.kill();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        match self.mode {
            Mode::Tls(..) => format!("rediss://127.0.0.1:{}", self.port),
            _ => format!("redis://127.0.0.1:{}", self.port),
        }
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
        let client = match &self.mode {
            Mode::Tls(tls, client_auth) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: client_auth.then(|| redis::ClientTlsConfig {
                        client_cert: std::fs::read(&tls.client_cert).unwrap_or_default(),
                        client_key: std::fs::read(&tls.client_key).unwrap_or_default(),
                    }),
                    root_cert: Some(std::fs::read(&tls.ca).ok()?),
                },
            )
            .ok()?,
            _ => redis::Client::open(self.url()).ok()?,
        };
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

    // kill(2) on the redis-server this harness started: the one unsafe.
    #[allow(unsafe_code)]
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
            self.child = Some(spawn_redis(self.port, &self.mode));
            if self.wait_ready(Duration::from_secs(3)) {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    #[allow(unsafe_code)]
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

/// A three-node Redis Cluster (no replicas), every slot assigned and `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let path = dir.path().to_path_buf();
                Redis::start_as(&move |_| Mode::ClusterNode(path.clone(), free_port()))
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli (Debian: redis-tools, a dependency of redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok(Duration::from_secs(20));
        cluster
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for n in &self.nodes {
            loop {
                let info = match n.try_cmd(&["CLUSTER", "INFO"]) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).to_string(),
                    Some(redis::Value::VerbatimString { text, .. }) => text,
                    _ => String::new(),
                };
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Sum of the commands every node processed.
    pub fn commands_processed(&self) -> u64 {
        self.nodes.iter().map(Redis::commands_processed).sum()
    }
}

impl Store for RedisCluster {
    /// One seed in `redis_url`, the others as extra seeds.
    fn fleet_lines(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!(
            "redis_url = \"{}\"\nredis_cluster = true\nredis_cluster_seeds = [{}]",
            self.nodes[0].url(),
            seeds.join(", ")
        )
    }
}

/// One instance of a fleet on `store`, cluster `pool` on `sims`, model `m`.
pub fn fleet_config(
    sims: &[SocketAddr],
    store: &dyn Store,
    keys: &std::path::Path,
    id: &str,
    extra: &[&str],
) -> ProxyConfig {
    let mut fleet = format!(
        "[fleet]\n{}\ninstance_id = \"{id}\"\nheartbeat_ms = 200\n",
        store.fleet_lines()
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

/// `n` tokengate instances sharing `redis` (a standalone server by default).
pub struct Fleet<R: Store = Redis> {
    pub redis: R,
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub keys: std::path::PathBuf,
    pub nodes: Vec<Proxy>,
}

impl Fleet<Redis> {
    pub fn start(n: usize, extra: &[&str]) -> Fleet {
        Fleet::on(Redis::start(), n, extra)
    }
}

impl<R: Store> Fleet<R> {
    pub fn on(redis: R, n: usize, extra: &[&str]) -> Fleet<R> {
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

/// Starts `tokengate run` with `config`, expecting it to refuse: its exit status and stderr.
pub fn start_refused(config: &ProxyConfig) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, config.render(dir.path())).expect("write config");
    std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).expect("write admin token");
    let mut child = Command::new(PROXY_BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--ready-file")
        .arg(dir.path().join("ready.json"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokengate");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(!status.success(), "tokengate started: {err}");
            assert!(
                !dir.path().join("ready.json").exists(),
                "tokengate got ready: {err}"
            );
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("tokengate did not refuse to start within 20 s: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tokengate check` on `config`: (passed, stdout + stderr).
pub fn check(config: &ProxyConfig) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, config.render(dir.path())).expect("write config");
    std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).expect("write admin token");
    let out = Command::new(PROXY_BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run tokengate check");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// What the hammer saw: (seconds since start, tokens admitted) per admitted request, and
/// every status.
#[derive(Default)]
pub struct Hammered {
    pub admitted: Vec<(f64, u64)>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

/// The tokens a streamed reply metered (its final usage chunk).
fn streamed_usage(text: &str) -> Option<u64> {
    sse_events(text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|v| v["usage"]["total_tokens"].as_u64())
}

/// Hammers `secret` through the nodes for `run`: `workers[i]` concurrent clients on node i
/// (a skewed split), each sending one request every `pace`.
pub async fn hammer(
    nodes: &[Proxy],
    secret: &str,
    workers: &[usize],
    run: Duration,
    pace: Duration,
    stream: bool,
) -> Hammered {
    let seen = Arc::new(Mutex::new(Hammered::default()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (node, &n) in nodes.iter().zip(workers) {
        for _ in 0..n {
            let url = node.url("/v1/chat/completions");
            let (secret, seen) = (secret.to_string(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut body = json!({
                    "model": "m", "max_tokens": 40, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}],
                });
                if stream {
                    body["stream_options"] = json!({"include_usage": true});
                }
                while start.elapsed() < run {
                    let sent = start.elapsed().as_secs_f64();
                    let auth = format!("Bearer {secret}");
                    let (status, tokens) = if stream {
                        let (status, text) =
                            stream_text(&url, &body.to_string(), &[("authorization", &auth)]).await;
                        (status, streamed_usage(&text).unwrap_or(0))
                    } else {
                        match c
                            .post(&url)
                            .header("authorization", &auth)
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(r) => (r.status().as_u16(), 1),
                            Err(_) => (0, 0),
                        }
                    };
                    {
                        let mut s = seen.lock().unwrap();
                        *s.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            s.admitted.push((sent, tokens));
                        }
                    }
                    tokio::time::sleep(pace).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}
