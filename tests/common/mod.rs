//! Integration-test harness: real `tokengate` and `tokengate-sim` processes on 127.0.0.1
//! ephemeral ports, owned by the test and killed on drop. Every wait has a deadline.
//!
//! Ports: every process binds port 0 and reports what the kernel chose (the simulator prints
//! `LISTENING addr`, the proxy writes its `--ready-file`); nothing guesses a free port.
//!
//! Timing: a test whose assertions depend on wall-clock windows (health intervals, timeouts,
//! refill rates, shutdown grace) lives in a `mod timing` of its file and takes [`serial`];
//! `tests/run-all.sh` runs every `timing::` test alone, after the rest, one at a time. Bounds
//! there are generous multiples of the configured interval, and waits poll until a deadline
//! ([`eventually`]) instead of sleeping a fixed time.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod fleet;

pub const SIM_BIN: &str = env!("CARGO_BIN_EXE_tokengate-sim");
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// The admin token every test proxy is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running simulator.
pub struct Sim {
    child: Child,
    pub addr: SocketAddr,
}

impl Sim {
    /// Start a simulator with extra flags; `--listen 127.0.0.1:0` is added.
    pub fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(SIM_BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tokengate-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("simulator printed LISTENING in time");
        let addr = line
            .strip_prefix("LISTENING ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected simulator output: {line}"));
        Sim { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL, like a crashed engine: every open connection is reset by the kernel.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn requests(&self) -> Vec<Value> {
        let v: Value = reqwest::get(self.url("/sim/requests"))
            .await
            .expect("sim requests")
            .json()
            .await
            .expect("sim requests json");
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(self.url("/sim/stats"))
            .await
            .expect("sim stats")
            .json()
            .await
            .expect("sim stats json")
    }

    pub async fn set_faults(&self, faults: Value) {
        let r = reqwest::Client::new()
            .post(self.url("/sim/faults"))
            .json(&faults)
            .send()
            .await
            .expect("sim faults");
        assert!(
            r.status().is_success(),
            "setting faults failed: {}",
            r.status()
        );
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago. Racy by nature: only for a process that must not listen
/// yet when its address is needed (a replica "still loading its weights"); everything else
/// binds port 0 and reports its address.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sockets bound (never listening) for [`dead_addr`], kept for the life of the test process.
static DEAD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

/// An address where nothing listens (connections are refused). The port stays bound by this
/// process, so no other test's port-0 listener can land on it.
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind a dead port");
    let addr = socket.local_addr().expect("dead port address");
    DEAD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    addr
}

/// The process-wide lock of the timing group: a `timing::` test holds it for its whole run, so
/// two never overlap even under a plain `cargo test` (run-all.sh also runs them one at a time,
/// after everything else). Async-aware: each test has its own runtime and awaits with it held.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Poll `probe` (every 10 ms) until it yields `Some`; panics after `within` naming `what`.
/// Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return (v, started.elapsed());
        }
        assert!(started.elapsed() < within, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a condition; returns how long it took to hold.
pub async fn assert_eventually<F, Fut>(within: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(within, what, || {
        let c = cond();
        async move { c.await.then_some(()) }
    })
    .await
    .1
}

/// What a tokengate process wrote to its `--ready-file` once every listener accepted.
#[derive(Debug, Clone)]
pub struct Bound {
    pub pid: u32,
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

impl Bound {
    fn parse(text: &str) -> Option<Bound> {
        let v: Value = serde_json::from_str(text).ok()?;
        let addrs = |key: &str| -> Option<Vec<SocketAddr>> {
            v[key]
                .as_array()?
                .iter()
                .map(|a| a.as_str()?.parse().ok())
                .collect()
        };
        Some(Bound {
            pid: u32::try_from(v["pid"].as_u64()?).ok()?,
            listen: addrs("listen")?,
            tls_listen: addrs("tls_listen")?,
            admin: v["admin_listen"].as_str()?.parse().ok()?,
        })
    }
}

/// Wait until `child` wrote its ready file at `path` (the file is written whole, by rename);
/// panics with the exit status if the process died first.
pub fn wait_for_ready_file(path: &Path, child: &mut Child) -> Bound {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(bound) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| Bound::parse(&t))
            .filter(|b| b.pid == child.id())
        {
            return bound;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tokengate exited ({status}) before writing {}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tokengate wrote no ready file ({}) within 30 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until process `pid` catches every signal in `signals` (`SigCgt` in /proc): a signal
/// sent before its handler exists would take the default action, or be ignored by a process a
/// non-interactive shell started in the background.
pub fn wait_for_signal_handlers(pid: u32, signals: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let caught = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("SigCgt:"))?;
                u64::from_str_radix(line["SigCgt:".len()..].trim(), 16).ok()
            })
            .unwrap_or(0);
        if signals.iter().all(|s| caught & (1 << (s - 1)) != 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} installed no handlers for {signals:?} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The config text's listeners: port 0 everywhere, so the kernel picks and the proxy reports.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A cluster for [`ProxyConfig`].
pub struct ClusterSpec {
    pub name: &'static str,
    pub flavour: &'static str,
    pub replicas: Vec<SocketAddr>,
    /// Extra `key = value` lines inside the `[[clusters]]` table.
    pub extra: Vec<String>,
}

/// A model route for [`ProxyConfig`].
pub struct ModelSpec {
    pub alias: &'static str,
    pub cluster: &'static str,
    pub served_name: &'static str,
}

#[derive(Default)]
pub struct ProxyConfig {
    pub clusters: Vec<ClusterSpec>,
    pub models: Vec<ModelSpec>,
    /// Extra `key = value` lines for `[server]`.
    pub server_extra: Vec<String>,
    pub top_extra: Vec<String>,
    /// Extra tables appended at the end (e.g. `[auth]`).
    pub tables: Vec<String>,
}

impl ProxyConfig {
    pub fn cluster(
        mut self,
        name: &'static str,
        flavour: &'static str,
        replicas: &[SocketAddr],
    ) -> Self {
        self.clusters.push(ClusterSpec {
            name,
            flavour,
            replicas: replicas.to_vec(),
            extra: Vec::new(),
        });
        self
    }

    /// Add `key = value` lines to the last cluster.
    pub fn with(mut self, lines: &[&str]) -> Self {
        if let Some(c) = self.clusters.last_mut() {
            c.extra.extend(lines.iter().map(|l| l.to_string()));
        }
        self
    }

    /// Extra top-level lines (before any table), e.g. `rules = [...]`.
    pub fn top(mut self, line: &str) -> Self {
        self.top_extra.push(line.to_string());
        self
    }

    pub fn model(
        mut self,
        alias: &'static str,
        cluster: &'static str,
        served_name: &'static str,
    ) -> Self {
        self.models.push(ModelSpec {
            alias,
            cluster,
            served_name,
        });
        self
    }

    pub fn server(mut self, line: &str) -> Self {
        self.server_extra.push(line.to_string());
        self
    }

    /// Append a table (e.g. `[auth]\nkeys_file = "keys.toml"`).
    pub fn table(mut self, text: &str) -> Self {
        self.tables.push(text.to_string());
        self
    }

    pub fn render(&self, dir: &std::path::Path) -> String {
        let mut out = String::new();
        for line in &self.top_extra {
            out.push_str(line);
            out.push('\n');
        }
        out += &format!(
            "[server]\nlisten = [\"{ANY_PORT}\"]\nadmin_listen = \"{ANY_PORT}\"\nthreads = 2\n\
             grace_period_seconds = 0\ngraceful_shutdown_timeout_seconds = 1\n\
             pid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\n\
             admin_token_file = \"admin-token\"\naccess_log = \"access.log\"\n",
            pid = dir.join("tokengate.pid").display(),
            sock = dir.join("upgrade.sock").display(),
        );
        for line in &self.server_extra {
            out.push_str(line);
            out.push('\n');
        }
        for c in &self.clusters {
            let replicas: Vec<String> = c.replicas.iter().map(|r| format!("\"{r}\"")).collect();
            out.push_str(&format!(
                "\n[[clusters]]\nname = \"{}\"\nflavour = \"{}\"\nreplicas = [{}]\n",
                c.name,
                c.flavour,
                replicas.join(", ")
            ));
            for line in &c.extra {
                out.push_str(line);
                out.push('\n');
            }
        }
        for m in &self.models {
            out.push_str(&format!(
                "\n[[models]]\nalias = \"{}\"\ncluster = \"{}\"\nserved_name = \"{}\"\n",
                m.alias, m.cluster, m.served_name
            ));
        }
        for t in &self.tables {
            out.push('\n');
            out.push_str(t);
            out.push('\n');
        }
        out
    }
}

/// A running proxy.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Proxy {
    /// Start on port-0 listeners; returns once the ready file names them (the proxy listener
    /// opens only after every replica was probed).
    pub fn start(config: &ProxyConfig) -> Proxy {
        Proxy::start_under(config, &[])
    }

    /// Start through a command that execs its arguments (e.g. `prlimit --nofile=300:300 --`),
    /// so the proxy's pid stays the child's.
    pub fn start_under(config: &ProxyConfig, wrapper: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("tokengate.toml");
        std::fs::write(&config_path, config.render(dir.path())).expect("write config");
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).expect("write admin token");
        let (child, bound) = spawn_proxy(&config_path, dir.path(), wrapper);
        let proxy = Proxy {
            child,
            addr: bound.listen[0],
            admin: bound.admin,
            dir,
            config_path,
        };
        wait_until_ready(proxy.admin);
        proxy
    }

    /// Kill the proxy and start it again (without a wrapper) on the same directory and config
    /// file (new port-0 listeners); returns once it is ready.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.path().join("ready.json"));
        let (child, bound) = spawn_proxy(&self.config_path, self.dir.path(), &[]);
        self.child = child;
        self.addr = bound.listen[0];
        self.admin = bound.admin;
        wait_until_ready(self.admin);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replace the config file (same listeners) with a new rendering.
    pub fn rewrite_config(&self, config: &ProxyConfig) {
        let tmp = self.dir.path().join("tokengate.toml.tmp");
        std::fs::write(&tmp, config.render(self.dir.path())).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("swap config");
    }

    /// An authorised admin request.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// The access log lines written so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tokengate run` on `config_path`, through `wrapper` if any (a command that execs its
/// arguments), and wait for its ready file in `dir`.
fn spawn_proxy(config_path: &Path, dir: &Path, wrapper: &[&str]) -> (Child, Bound) {
    let ready_file = dir.join("ready.json");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(PROXY_BIN);
            c
        }
        None => Command::new(PROXY_BIN),
    };
    let mut child = command
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .arg("--ready-file")
        .arg(&ready_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tokengate");
    let bound = wait_for_ready_file(&ready_file, &mut child);
    (child, bound)
}

/// The admin `/health` says every replica was probed once.
pub fn wait_until_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.contains("\"ready\": true") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("proxy not ready (replicas probed) within 20 s");
}

pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} within 20 s");
}

/// A chat body with `model` as the last key (how the OpenAI Python SDK sends it), padded so
/// the whole body is exactly `total_len` bytes.
pub fn chat_body_model_last(model: &str, total_len: usize) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"user","content":""#;
    let tail = format!(r#""}}],"max_tokens":4,"model":"{model}"}}"#);
    let fill = total_len
        .checked_sub(head.len() + tail.len())
        .expect("body too small for the template");
    let mut body = Vec::with_capacity(total_len);
    body.extend_from_slice(head.as_bytes());
    body.extend(std::iter::repeat_n(b'a', fill));
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), total_len);
    body
}

/// Send a request and parse its JSON body (panics with context otherwise).
pub async fn get_json(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// POST JSON bytes; returns status, headers and parsed body (or `Value::Null`).
pub async fn post(url: &str, body: Vec<u8>) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("response body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, value)
}

/// Assert the OpenAI error shape and return `error`.
pub fn assert_openai_error(body: &Value) -> &Value {
    let e = body
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object in {body}"));
    assert!(e["message"].is_string(), "message: {body}");
    assert!(e["type"].is_string(), "type: {body}");
    assert!(e.get("param").is_some(), "param: {body}");
    assert!(e["code"].is_string() || e["code"].is_null(), "code: {body}");
    e
}

/// Sum of a Prometheus counter over the series whose labels include every `(name, value)`.
pub async fn metric_sum(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Stream a request and return the raw SSE text the client received (also on an error).
pub async fn stream_text(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let mut out = Vec::new();
    let mut stream = r.bytes_stream();
    use futures_util::StreamExt;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(p) => out.extend_from_slice(&p),
            Err(_) => break,
        }
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// The `data:` payloads of an SSE text, parsed where JSON.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

/// One cluster `pool` of one simulator, alias `m` served as `served`.
pub fn one_replica(sim: &Sim, served: &'static str) -> ProxyConfig {
    ProxyConfig::default()
        .cluster("pool", "vllm", &[sim.addr])
        .model("m", "pool", served)
}

/// The status code of a raw HTTP/1 response (0 when there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw HTTP/1 response (`Null` when there is none).
pub fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Run the openssl CLI in `dir` (test CAs and certificates); panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for the TLS tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
