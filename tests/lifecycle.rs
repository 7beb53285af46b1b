//! Running tokengate as an edge service: the systemd unit, graceful shutdown on SIGTERM, the
//! zero-downtime binary upgrade (Pingora's listener hand-off, driven by the unit's own
//! ExecReload script) under load, and TLS termination with HTTP/2.
//!
//! Every process is started here, on 127.0.0.1 ephemeral ports, and killed by its own pid when
//! the test ends; every wait has a deadline.

// kill(2) on the proxy this test started: the one unsafe, to send it signals.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{serial, wait_for_ready_file, Sim, ANY_PORT, PROXY_BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A process this test started (directly or through the upgrade script), killed on drop.
struct Owned {
    child: Option<Child>,
    pid: i32,
}

impl Owned {
    fn child(child: Child) -> Owned {
        Owned {
            pid: child.id() as i32,
            child: Some(child),
        }
    }

    /// A daemonized process (not our child) identified by its pid file.
    fn daemon(pid: i32) -> Owned {
        Owned { child: None, pid }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid this test started.
        unsafe {
            libc::kill(self.pid, sig);
        }
    }

    /// Wait for our child to exit, up to `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self
            .child
            .as_mut()
            .expect("only children can be waited for");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn alive(&self) -> bool {
        // A daemon's parent is gone; a zombie would still answer kill(0), so read its state.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => false,
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                if self.alive() {
                    self.signal(libc::SIGKILL);
                }
            }
        }
    }
}

/// A config on port-0 listeners; the addresses are known once `start` read the ready file.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    tls: Option<SocketAddr>,
}

impl Setup {
    fn new(sim: &Sim, server_extra: &str, tls: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = format!(
            "[server]\nlisten = [\"{ANY_PORT}\"]\nadmin_listen = \"{ANY_PORT}\"\nthreads = 2\n\
             pid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\naccess_log = \"off\"\n{server_extra}\n",
            pid = dir.path().join("tokengate.pid").display(),
            sock = dir.path().join("upgrade.sock").display(),
        );
        if tls {
            make_test_pki(dir.path());
            text += &format!(
                "tls_listen = [\"{ANY_PORT}\"]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n"
            );
        }
        text += &format!(
            "\n[[clusters]]\nname = \"pool\"\nflavour = \"vllm\"\nreplicas = [\"{}\"]\n\
             \n[[models]]\nalias = \"m\"\ncluster = \"pool\"\nserved_name = \"s\"\n",
            sim.addr
        );
        let config = dir.path().join("tokengate.toml");
        std::fs::write(&config, text).expect("write config");
        let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
        Setup {
            dir,
            config,
            listen: unknown,
            admin: unknown,
            tls: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tokengate run` in the foreground, ready (listeners up, replicas probed, signal
    /// handlers installed); learns the bound addresses from the ready file.
    fn start(&mut self) -> Owned {
        let log = std::fs::File::create(self.path("proxy-a.log")).expect("log file");
        let ready_file = self.path("ready.json");
        let mut child = Command::new(PROXY_BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tokengate");
        let bound = wait_for_ready_file(&ready_file, &mut child);
        self.listen = bound.listen[0];
        self.admin = bound.admin;
        self.tls = bound.tls_listen.first().copied();
        let owned = Owned::child(child);
        wait_ready(self.admin, owned.pid);
        owned
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }
}

/// Admin `/health` says every replica was probed, and Pingora has installed its signal
/// handlers (PINGORA.md §8: signal only a ready process).
fn wait_ready(admin: SocketAddr, pid: i32) {
    common::wait_until_ready(admin);
    common::wait_for_signal_handlers(pid as u32, &[libc::SIGINT, libc::SIGQUIT, libc::SIGTERM]);
}

/// A test CA and a server certificate for `localhost` / `127.0.0.1`, made with the openssl CLI:
/// `ca.pem`, `server.pem`, `server.key` (and `other.key`, a key that fits nothing).
fn make_test_pki(dir: &Path) {
    let run = |args: &[&str]| common::openssl(dir, args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tokengate test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "other.key",
    ]);
}

fn chat(stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"m","stream":{stream},"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// One streamed chat of `tokens` tokens, `itl_ms` apart; the raw SSE text, or the error.
async fn stream(url: String, tokens: u32, itl_ms: u32) -> Result<String, String> {
    use futures_util::StreamExt;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-sim-tokens", tokens.to_string())
        .header("x-sim-itl-ms", itl_ms.to_string())
        .body(chat(true, tokens))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let mut body = r.bytes_stream();
    let mut text = Vec::new();
    while let Some(piece) = body.next().await {
        match piece {
            Ok(p) => text.extend_from_slice(&p),
            Err(e) => return Err(format!("cut after {} bytes: {e}", text.len())),
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn complete(sse: &str, tokens: u32) -> bool {
    let events = common::sse_events(sse);
    events.last().map(String::as_str) == Some("[DONE]") && events.len() as u32 >= tokens
}

/// Short requests in a loop until `stop`: (ok, failures with reasons).
///
/// A pooled connection that was idle when the old process began shutting down is closed by
/// Pingora at once; a request written onto it at that instant fails before any response byte
/// (reset / incomplete message). HTTP/1.1 clients meet this race with any server that closes
/// idle connections; the official OpenAI SDK retries such connection errors (twice by
/// default), and so do the pooled workers here — once, and only for that error on a pooled
/// connection. Every retry is counted and printed; anything else is a failure.
async fn short_loop(url: String, pooled: bool, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if !pooled {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().unwrap();
    let (mut ok, mut failed, mut retried) = (0, Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let send = || {
            client
                .post(&url)
                .header("content-type", "application/json")
                .body(chat(false, 4))
                .send()
        };
        let mut r = send().await;
        if pooled && matches!(&r, Err(e) if e.is_request() && e.status().is_none()) {
            retried += 1;
            r = send().await;
        }
        match r {
            Ok(r) if r.status() == 200 => match r.bytes().await {
                Ok(b) if b.windows(6).any(|w| w == b"\"usage") => ok += 1,
                Ok(b) => failed.push(format!("body {}", String::from_utf8_lossy(&b))),
                Err(e) => failed.push(format!("body: {e}")),
            },
            Ok(r) => failed.push(format!("status {}", r.status())),
            Err(e) => failed.push(format!("send: {e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if retried > 0 {
        eprintln!("pooled worker retried {retried} request(s) after an idle-connection close");
    }
    (ok, failed)
}

/// `systemd-analyze verify` on every unit in `systemd/`, inside a temporary root that holds the
/// install layout the unit names (the real binary and the real reload helper at their
/// installed paths, plus the distribution's own units for the default dependencies). `verify`
/// checks that each Exec path exists and is executable; it runs nothing.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let required = std::env::var("TOKENGATE_REQUIRE_SYSTEMD_ANALYZE").as_deref() == Ok("1");
    let units: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("systemd"))
        .expect("systemd/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .collect();
    assert!(!units.is_empty(), "no systemd/*.service");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !required,
            "systemd-analyze is missing (apt-get install systemd); TOKENGATE_REQUIRE_SYSTEMD_ANALYZE=1"
        );
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let system_units = Path::new("/usr/lib/systemd/system");
    assert!(system_units.is_dir(), "no {}", system_units.display());

    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp root");
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib/tokengate",
        "usr/lib/systemd",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(at(d)).unwrap();
    }
    // Same filesystem as target/: a hard link, not a 200 MB copy.
    std::fs::hard_link(PROXY_BIN, at("/usr/bin/tokengate"))
        .or_else(|_| std::fs::copy(PROXY_BIN, at("/usr/bin/tokengate")).map(|_| ()))
        .expect("install the binary in the temp root");
    for (src, dst) in [
        (
            "systemd/tokengate-reload",
            "/usr/lib/tokengate/tokengate-reload",
        ),
        ("systemd/tokengate-upgrade", "/usr/sbin/tokengate-upgrade"),
    ] {
        std::fs::copy(Path::new(ROOT).join(src), at(dst)).expect(src);
    }
    let cp = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(at("/usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(cp.success());
    for unit in &units {
        let installed = at("/etc/systemd/system").join(unit.file_name().unwrap());
        std::fs::copy(unit, &installed).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .arg(&installed)
            .env("SYSTEMD_LOG_LEVEL", "notice")
            .output()
            .expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {}: {}\n{stderr}",
            unit.display(),
            out.status
        );
    }

    // The settings the issue asks for, and stop timeout > grace + runtime shutdown timeout.
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/tokengate.service")).unwrap();
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("tokengate.service has no {key}="))
            .trim()
            .to_string()
    };
    for (key, want) in [
        ("Type", "forking"),
        ("PIDFile", "/run/tokengate/tokengate.pid"),
        ("User", "tokengate"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("LimitNOFILE", "262144"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "tokengate"),
        ("StateDirectory", "tokengate"),
        ("ConfigurationDirectory", "tokengate"),
        ("ExecReload", "/usr/lib/tokengate/tokengate-reload $MAINPID"),
    ] {
        assert_eq!(value(key), want, "{key}");
    }
    let pki = tempfile::tempdir().unwrap();
    make_test_pki(pki.path());
    // An unreadable admin token file is a config error: give the sample one.
    std::fs::write(pki.path().join("admin-token"), "sample").unwrap();
    let sample = tokengate::config::parse(
        &std::fs::read_to_string(Path::new(ROOT).join("systemd/tokengate.toml"))
            .unwrap()
            .replace("/etc/tokengate/tls/fullchain.pem", "server.pem")
            .replace("/etc/tokengate/tls/privkey.pem", "server.key")
            .replace("/etc/tokengate/admin-token", "admin-token"),
        &pki.path().join("tokengate.toml"),
    )
    .unwrap_or_else(|e| panic!("systemd/tokengate.toml: {e}"));
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    let s = &sample.server;
    assert!(stop > s.grace_period_seconds + s.graceful_shutdown_timeout_seconds);
    assert_eq!(s.pid_file, value("PIDFile"));
    assert!(s.upgrade_sock.starts_with("/run/tokengate/"));
    assert!(sample
        .auth
        .as_ref()
        .is_some_and(|a| a.keys_file.starts_with("/var/lib/tokengate/")));
}

fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is needed for the TLS tests (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// TLS termination: TLS 1.2 and 1.3, HTTP/2 by ALPN (HTTP/1.1 still offered), a >64 KiB body
/// over h2 (the replayed-body session path), SSE over h2; the plain listener keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_http2_and_http1() {
    let (_, version, _) = curl(&["-V"]);
    assert!(version.contains("HTTP2"), "curl without HTTP/2: {version}");
    let sim = Sim::start(&["--served-model-name", "s"]);
    let mut setup = Setup::new(&sim, "grace_period_seconds = 0", true);
    let _proxy = setup.start();
    let tls = setup.tls.unwrap();
    let ca = setup.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let base = format!("https://localhost:{}", tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let https = |extra: &[&str], path: &str| {
        let url = format!("{base}{path}");
        let mut args = vec!["--cacert", ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    let w = ["-o", "/dev/null", "-w", "%{http_version} %{http_code}"];

    let (ok, out, err) = https(&[&["--http2"][..], &w].concat(), "/v1/models");
    assert!(ok && out == "2 200", "{out} {err}");
    let (ok, out, err) = https(&[&["--http1.1"][..], &w].concat(), "/v1/models");
    assert!(ok && out == "1.1 200", "{out} {err}");
    for v in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, out, err) = https(&[&v[..], &w].concat(), "/health");
        assert!(ok && out == "2 200", "{v:?}: {out} {err}");
    }
    // Without the test CA the certificate is not trusted.
    let (ok, _, _) = curl(&["--resolve", &resolve, &format!("{base}/health")]);
    assert!(!ok, "an untrusted certificate must fail verification");

    // 200 KiB body over h2: above Pingora's 64 KiB retry buffer.
    let body = common::chat_body_model_last("m", 200 * 1024);
    let body_path = setup.path("big.json");
    std::fs::write(&body_path, &body).unwrap();
    let at_file = format!("@{}", body_path.display());
    let (ok, out, err) = https(
        &[
            "--http2",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &at_file,
            "-w",
            "\n%{http_version} %{http_code}",
        ],
        "/v1/chat/completions",
    );
    assert!(ok && out.ends_with("\n2 200"), "{out} {err}");
    assert!(out.contains("\"chat.completion\""), "{out}");
    let seen = sim.requests().await;
    let last = seen.last().expect("the replica saw the request");
    assert_eq!(
        last["body_len"].as_u64().unwrap() as usize,
        body.len(), // alias `m` -> served `s`: same length
        "{last}"
    );

    // SSE over h2.
    let (ok, out, err) = https(
        &[
            "--http2",
            "-N",
            "-H",
            "content-type: application/json",
            "-H",
            "x-sim-itl-ms: 20",
            "--data",
            &chat(true, 8),
        ],
        "/v1/chat/completions",
    );
    assert!(ok && complete(&out, 8), "{out} {err}");

    // Plain HTTP on `listen` is still there.
    let (status, _, _) = common::post(
        &setup.url("/v1/chat/completions"),
        chat(false, 2).into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
}

/// Bad TLS settings are config errors with file, line and field: never a panic at startup.
#[test]
fn tls_config_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    make_test_pki(dir.path());
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let check = |server: &str| -> (bool, String) {
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\n{server}\n\n[[clusters]]\nname = \"a\"\n\
                 flavour = \"vllm\"\nreplicas = []\n"
            ),
        )
        .unwrap();
        let out = Command::new(PROXY_BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tls = "tls_listen = [\"127.0.0.1:2\"]";
    let (ok, err) = check(&format!(
        "{tls}\ntls_cert = \"server.pem\"\ntls_key = \"server.key\""
    ));
    assert!(ok, "{err}");
    let cases = [
        (
            format!("{tls}\ntls_cert = \"missing.pem\"\ntls_key = \"server.key\""),
            "t.toml:4:12: server.tls_cert: cannot read",
        ),
        (
            format!("{tls}\ntls_cert = \"garbage.pem\"\ntls_key = \"server.key\""),
            "t.toml:4:12: server.tls_cert: |garbage.pem holds no PEM `CERTIFICATE` block",
        ),
        (
            format!("{tls}\ntls_cert = \"server.pem\"\ntls_key = \"server.pem\""),
            "t.toml:5:11: server.tls_key: |server.pem holds no PEM private key",
        ),
        (
            format!("{tls}\ntls_cert = \"server.pem\"\ntls_key = \"other.key\""),
            "t.toml:5:11: server.tls_key: |other.key does not fit the certificate in ",
        ),
        (
            tls.to_string(),
            "server.tls_listen: TLS listeners need `tls_cert` and `tls_key`",
        ),
        (
            format!("{tls}\ntls_cert = \"server.pem\""),
            "server.tls_key: `tls_cert` and `tls_key` go together",
        ),
        (
            "tls_cert = \"server.pem\"\ntls_key = \"server.key\"".to_string(),
            "`tls_listen` is empty",
        ),
        (
            "tls_listen = [\"127.0.0.1:1\"]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\""
                .to_string(),
            "server.tls_listen[0]: `127.0.0.1:1` is already a listen address",
        ),
    ];
    for (server, want) in cases {
        let (ok, err) = check(&server);
        assert!(
            !ok && want.split('|').all(|w| err.contains(w)),
            "{server}\n---\n{err}\n--- wanted: {want}"
        );
    }
}

/// Tests whose assertions hang on shutdown and hand-over periods: run alone and one at a time
/// (see tests/common: `serial`).
mod timing {
    use super::*;

    /// SIGTERM: Pingora closes the listeners at once (new connections are refused within
    /// milliseconds), keeps serving every request and stream already accepted, sleeps the whole
    /// `grace_period_seconds` (even when nothing is in flight), then gives the runtimes
    /// `graceful_shutdown_timeout_seconds` and exits; a stream still running then is cut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sigterm_drains_in_flight_streams_and_refuses_new_connections() {
        let _serial = serial().await;
        const GRACE: u64 = 4;
        const SHUTDOWN: u64 = 1;
        // Bounds past a configured period: 3 x the shutdown timeout.
        const SLACK: Duration = Duration::from_secs(3 * SHUTDOWN);
        let sim = Sim::start(&["--served-model-name", "s"]);
        let mut setup = Setup::new(
            &sim,
            &format!(
                "grace_period_seconds = {GRACE}\ngraceful_shutdown_timeout_seconds = {SHUTDOWN}"
            ),
            false,
        );
        let mut proxy = setup.start();
        let url = setup.url("/v1/chat/completions");

        // Five streams of ~2.5 s, and one of ~20 s that cannot finish within the grace period.
        let short: Vec<_> = (0..5)
            .map(|_| tokio::spawn(stream(url.clone(), 25, 100)))
            .collect();
        let long = tokio::spawn(stream(url.clone(), 200, 100));
        common::assert_eventually(
            Duration::from_secs(10),
            "6 streams at the replica",
            || async { sim.stats().await["in_flight"] == 6 },
        )
        .await;

        let t0 = Instant::now();
        proxy.signal(libc::SIGTERM);
        let refused_after = tokio::task::spawn_blocking(move || loop {
            match TcpStream::connect_timeout(&setup.listen, Duration::from_millis(200)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break t0.elapsed(),
                _ if t0.elapsed() > Duration::from_secs(3) => {
                    panic!("listener still open after 3 s")
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        })
        .await
        .unwrap();

        for s in short {
            let sse = s.await.unwrap().expect("in-flight stream survives SIGTERM");
            assert!(complete(&sse, 25), "truncated stream: {sse}");
        }
        let streams_done = t0.elapsed();
        let long = long.await.unwrap();
        let long_cut = t0.elapsed();
        let status = tokio::task::spawn_blocking(move || {
            let s = proxy.wait_exit(Duration::from_secs(GRACE + SHUTDOWN + 10));
            (s, t0.elapsed())
        })
        .await
        .unwrap();
        let (exit, exited_after) = status;
        eprintln!(
            "SIGTERM: refused after {refused_after:?}; 5 streams done at {streams_done:?}; \
         20 s stream ended at {long_cut:?} ({}); exit {exit:?} at {exited_after:?}",
            if long.as_ref().is_ok_and(|s| complete(s, 200)) {
                "complete"
            } else {
                "cut"
            }
        );
        assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
        assert!(exit.expect("exited in time").success());
        assert!(
            exited_after >= Duration::from_secs(GRACE),
            "{exited_after:?}"
        );
        assert!(
            exited_after < Duration::from_secs(GRACE + SHUTDOWN) + SLACK,
            "{exited_after:?}"
        );
        assert!(
            !long.as_ref().is_ok_and(|s| complete(s, 200)),
            "a 20 s stream cannot outlive grace + shutdown timeout"
        );
        // Pingora's runtime shutdown drops async tasks at once: a stream is cut when the grace
        // period ends (graceful_shutdown_timeout_seconds only bounds blocking threads).
        assert!(long_cut >= Duration::from_secs(GRACE), "{long_cut:?}");
        assert!(
            long_cut < Duration::from_secs(GRACE) + SLACK,
            "{long_cut:?}"
        );
    }

    /// The unit's ExecReload helper performs Pingora's hand-off while clients stream and send
    /// short requests: new process B started with `--upgrade --daemon` (same config, same
    /// upgrade_sock), old process A gets SIGQUIT, sends its listeners, keeps accepting for 5 s,
    /// then drains for grace_period_seconds. No request fails, no stream is cut, and after A has
    /// exited every new connection is served (by B, the only process left).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn binary_upgrade_under_load_drops_nothing() {
        let _serial = serial().await;
        const GRACE: u64 = 12;
        const STREAM_TOKENS: u32 = 100; // x 100 ms: ~10 s per stream
        let sim = Sim::start(&["--served-model-name", "s"]);
        let mut setup = Setup::new(
            &sim,
            &format!("grace_period_seconds = {GRACE}\ngraceful_shutdown_timeout_seconds = 2"),
            false,
        );
        let mut a = setup.start();
        let url = setup.url("/v1/chat/completions");

        let stop = Arc::new(AtomicBool::new(false));
        let loops: Vec<_> = (0..4)
            .map(|i| tokio::spawn(short_loop(url.clone(), i % 2 == 0, stop.clone())))
            .collect();
        let mut streams: Vec<_> = (0..4)
            .map(|_| tokio::spawn(stream(url.clone(), STREAM_TOKENS, 100)))
            .collect();
        common::assert_eventually(
            Duration::from_secs(10),
            "4 streams at the replica",
            || async { sim.stats().await["in_flight"].as_u64().unwrap_or(0) >= 4 },
        )
        .await;

        // What systemd runs for `tokengate-upgrade`: the request file, then ExecReload $MAINPID.
        let request = setup.path("upgrade.request");
        std::fs::write(&request, "").unwrap();
        let t_quit = Instant::now();
        let script = Command::new(Path::new(ROOT).join("systemd/tokengate-reload"))
            .arg(a.pid.to_string())
            .env("TOKENGATE_BIN", PROXY_BIN)
            .env("TOKENGATE_CONFIG", &setup.config)
            .env("TOKENGATE_PID_FILE", setup.path("tokengate.pid"))
            .env("TOKENGATE_UPGRADE_SOCK", setup.path("upgrade.sock"))
            .env("TOKENGATE_UPGRADE_REQUEST", &request)
            .env("TOKENGATE_UPGRADE_RESULT", setup.path("upgrade.result"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(setup.path("proxy-b.log")).unwrap())
            .status()
            .expect("run tokengate-reload");
        let handoff = t_quit.elapsed();
        let pid_b: i32 = std::fs::read_to_string(setup.path("tokengate.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        let b = (pid_b > 0).then(|| Owned::daemon(pid_b));
        assert!(
            script.success() && b.is_some(),
            "tokengate-reload failed ({script}): {}",
            std::fs::read_to_string(setup.path("proxy-b.log")).unwrap_or_default()
        );
        let b = b.unwrap();
        assert_ne!(pid_b, a.pid);
        assert!(!request.exists(), "the upgrade request is consumed");

        // More streams during the overlap (A and B both accept) and after A stopped accepting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        streams.extend((0..2).map(|_| tokio::spawn(stream(url.clone(), STREAM_TOKENS, 100))));
        tokio::time::sleep(Duration::from_secs(4)).await;
        streams.extend((0..2).map(|_| tokio::spawn(stream(url.clone(), STREAM_TOKENS, 100))));

        let (a_status, a_exit) = tokio::task::spawn_blocking(move || {
            let s = a.wait_exit(Duration::from_secs(5 + GRACE + 2 + 10));
            (s, t_quit.elapsed())
        })
        .await
        .unwrap();
        assert!(a_status.expect("A exited in time").success());
        assert!(b.alive(), "B must outlive A");

        // After A has gone, new connections (admin included) are B's.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for l in loops {
            let (o, f) = l.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        let total_streams = streams.len();
        let mut cut = Vec::new();
        for s in streams {
            match s.await.unwrap() {
                Ok(sse) if complete(&sse, STREAM_TOKENS) => {}
                Ok(sse) => cut.push(format!("truncated: {}", sse.len())),
                Err(e) => cut.push(e),
            }
        }
        let after_a = common::client()
            .get(format!("http://{}/health", setup.admin))
            .send()
            .await
            .expect("admin listener served by B");
        assert!(after_a.status().is_success());

        // The plain reload path of the same helper (POSIX sh, builtin kill): SIGHUP, B keeps
        // running. A config the proxy would reject fails the helper (so `systemctl reload`
        // fails) with the reason, and B is not signalled.
        let reload = |config: &Path| {
            Command::new(Path::new(ROOT).join("systemd/tokengate-reload"))
                .arg(pid_b.to_string())
                .env("TOKENGATE_BIN", PROXY_BIN)
                .env("TOKENGATE_CONFIG", config)
                .env("TOKENGATE_UPGRADE_REQUEST", &request)
                .output()
                .unwrap()
        };
        let hup = reload(&setup.config);
        assert!(hup.status.success(), "{hup:?}");
        let bad = setup.path("bad.toml");
        std::fs::write(&bad, "[server]\nlisten = 80\n").unwrap();
        let refused = reload(&bad);
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{refused:?}");
        assert!(
            why.contains("is invalid") && why.contains("not reloaded"),
            "{why}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.alive());
        let (status, _, _) = common::post(&url, chat(false, 2).into_bytes()).await;
        assert_eq!(status, 200);

        eprintln!(
            "upgrade: hand-off script took {handoff:?}; A exited {a_exit:?} after SIGQUIT; \
         short requests ok={ok} failed={}; streams {total_streams}, cut {}",
            failed.len(),
            cut.len()
        );
        assert!(ok > 100, "too little load to mean anything: {ok}");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(cut.is_empty(), "cut streams: {cut:?}");
        assert!(a_exit >= Duration::from_secs(5 + GRACE - 1), "{a_exit:?}");
    }
}
