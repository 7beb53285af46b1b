//! `tokengate demo`: a working gateway on this machine with simulated replicas.
//!
//! A small supervisor: it starts one simulator per replica in the demo config (same binary,
//! `sim` subcommand), then the proxy (`run`), prints examples, and on Ctrl-C or SIGTERM — or
//! when any child exits — stops every child. Children also get `PR_SET_PDEATHSIG`, so none
//! outlives a supervisor that is killed outright.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{self, Config};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The demo API key. Only its hash is in `conf/demo-keys.toml`; it is public, like the demo.
pub const DEMO_KEY: &str = "tg-lsf4HvJWocGeMCUSFHP5nrqA8ghMweiVOqHuQ80z6Bd";

pub fn run(config_path: &Path) -> Result<(), String> {
    let config = config::load(config_path).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut children = Children(Vec::new());

    let mut started: Vec<SocketAddr> = Vec::new();
    for cluster in &config.clusters {
        // Config order: like vLLM, the simulator answers with its first served name.
        let mut served: Vec<&str> = Vec::new();
        for route in config.routes_in_order() {
            if route.cluster.name == cluster.name && !served.contains(&route.served_name.as_str()) {
                served.push(&route.served_name);
            }
        }
        for replica in &cluster.replicas {
            // A replica listed in two clusters (the demo canary) runs once.
            if started.contains(&replica.addr) {
                continue;
            }
            started.push(replica.addr);
            let mut cmd = Command::new(&exe);
            cmd.arg("sim")
                .arg("--listen")
                .arg(replica.addr.to_string())
                .arg("--flavour")
                .arg(cluster.flavour.as_str())
                .arg("--replica-name")
                .arg(format!("{}@{}", cluster.name, replica.addr))
                .args(["--ttft-ms", "150", "--itl-ms", "25", "--tokens", "24"]);
            for name in &served {
                cmd.arg("--served-model-name").arg(name);
            }
            let child = spawn(cmd, true)?;
            let child = children.push(child);
            wait_for_listening(child, replica.addr)?;
        }
    }

    let mut proxy = Command::new(&exe);
    proxy.arg("run").arg("--config").arg(config_path);
    children.push(spawn(proxy, false)?);
    let listen = config.server.listen[0];
    wait_for_port(listen)?;
    print_examples(&config, listen);

    let outcome = wait_for_stop(&mut children);
    children.stop_all();
    outcome
}

fn spawn(mut cmd: Command, capture_stdout: bool) -> Result<Child, String> {
    if capture_stdout {
        cmd.stdout(Stdio::piped());
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    // Allowed: a child started by the demo must die with it (no std API for PDEATHSIG).
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

/// The simulator prints `LISTENING <addr>` once bound.
fn wait_for_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let Some(stdout) = child.stdout.take() else {
        return wait_for_port(addr);
    };
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("LISTENING") => {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            Ok(())
        }
        other => Err(format!("simulator for {addr} did not start: {other:?}")),
    }
}

fn wait_for_port(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "nothing listening on {addr} after {READY_TIMEOUT:?}"
    ))
}

/// Block until SIGINT/SIGTERM or a child exits.
fn wait_for_stop(children: &mut Children) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { eprintln!("\nstopping the demo"); return Ok(()); }
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => {
                    if let Some(status) = children.any_exited() {
                        return Err(format!("a demo process exited ({status}); stopping"));
                    }
                }
            }
        }
    })
}

struct Children(Vec<Child>);

impl Children {
    fn push(&mut self, child: Child) -> &mut Child {
        self.0.push(child);
        let last = self.0.len() - 1;
        &mut self.0[last]
    }

    fn any_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.iter_mut().find_map(|c| c.try_wait().ok().flatten())
    }

    fn stop_all(&mut self) {
        for child in &mut self.0 {
            // SIGINT: Pingora's fast shutdown; the simulator exits on it too.
            // Allowed: std can only SIGKILL a child; kill(2) on our own child's pid is sound.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn print_examples(config: &Config, listen: SocketAddr) {
    let models: Vec<&str> = config.routes_in_order().map(|r| r.alias.as_str()).collect();
    let chat = models.first().copied().unwrap_or("model");
    let embed = config
        .routes_in_order()
        .find(|r| r.alias.contains("embed"))
        .map_or(chat, |r| r.alias.as_str());
    println!(
        r#"
tokengate demo is up: proxy http://{listen}  admin http://{admin}
models: {models}

demo API key: {key}

  export TOKENGATE_KEY={key}
  curl -s http://{listen}/v1/models -H "authorization: Bearer $TOKENGATE_KEY"
  curl -s http://{listen}/v1/chat/completions -H "authorization: Bearer $TOKENGATE_KEY" \
    -H 'content-type: application/json' \
    -d '{{"model":"{chat}","messages":[{{"role":"user","content":"Hello!"}}]}}'
  curl -sN http://{listen}/v1/chat/completions -H "authorization: Bearer $TOKENGATE_KEY" \
    -H 'content-type: application/json' \
    -d '{{"model":"{chat}","stream":true,"messages":[{{"role":"user","content":"Hello!"}}]}}'
  curl -s http://{admin}/metrics | grep tokengate_
  curl -s http://{admin}/admin/replicas -H "authorization: Bearer $(cat conf/demo-admin-token)"

OpenAI Python SDK (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="http://{listen}/v1", api_key="{key}")
  print(client.chat.completions.create(model="{chat}",
        messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)
  for chunk in client.chat.completions.create(model="{chat}", stream=True,
        messages=[{{"role": "user", "content": "Hello!"}}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)
  print(client.embeddings.create(model="{embed}", input="hello").data[0].embedding[:4])

Ctrl-C stops the proxy and every simulated replica.
"#,
        admin = config.server.admin_listen,
        models = models.join(", "),
        key = DEMO_KEY,
    );
}
