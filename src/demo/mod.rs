//! `tokengate demo`: a working gateway on this machine with simulated replicas.
//!
//! A small supervisor: it starts one simulator per replica in the demo config (same binary,
//! `sim` subcommand), then the proxy (`run`), and prints examples. A replica that dies is
//! reported and restarted after a delay while the proxy routes around it, and every health
//! change the proxy sees is printed: the demo shows failover. Ctrl-C or SIGTERM — or the
//! proxy exiting — stops every child. Children also get `PR_SET_PDEATHSIG`, so none
//! outlives a supervisor that is killed outright.

mod health;
mod process;
mod replicas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::config::{self, Config};
use replicas::Replica;

/// The demo API key. Only its hash is in `conf/demo-keys.toml`; it is public, like the demo.
pub const DEMO_KEY: &str = "tg-lsf4HvJWocGeMCUSFHP5nrqA8ghMweiVOqHuQ80z6Bd";

/// How often the supervisor looks at its children and at the proxy's view of the replicas.
const TICK: Duration = Duration::from_millis(250);

pub fn run(config_path: &Path, restart_after: Duration) -> Result<(), String> {
    let config = config::load(config_path).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut sup = Supervisor {
        exe,
        replicas: replicas::from_config(&config),
        proxy: None,
    };
    replicas::start_all(&mut sup.replicas, &sup.exe)?;

    let mut proxy = Command::new(&sup.exe);
    proxy.arg("run").arg("--config").arg(config_path);
    sup.proxy = Some(process::spawn(proxy, false)?);
    let listen = config.server.listen[0];
    process::wait_for_port(listen)?;
    print_examples(&config, listen);
    print_replicas(&sup.replicas, restart_after);

    let token = config
        .server
        .admin_token_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string());
    let watch = health::HealthWatch::new(config.server.admin_listen, token);
    sup.supervise(watch, restart_after)
}

struct Supervisor {
    exe: PathBuf,
    replicas: Vec<Replica>,
    proxy: Option<Child>,
}

impl Supervisor {
    /// Block until SIGINT/SIGTERM or the proxy exits; replicas that die are restarted.
    fn supervise(
        &mut self,
        mut watch: health::HealthWatch,
        restart_after: Duration,
    ) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // `block_on` runs on this (the main) thread, so restarted children keep a live
        // parent-death thread.
        runtime.block_on(async {
            // Registered once, before the loop: a signal between two polls is kept, not lost.
            let listen = |kind| tokio::signal::unix::signal(kind).map_err(|e| e.to_string());
            let mut int = listen(tokio::signal::unix::SignalKind::interrupt())?;
            let mut term = listen(tokio::signal::unix::SignalKind::terminate())?;
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    // Signals first: Ctrl-C reaches the children too, and their exit then
                    // is the stop, not a crash to report or a replica to restart.
                    biased;
                    _ = int.recv() => { eprintln!("\nstopping the demo"); return Ok(()); }
                    _ = term.recv() => return Ok(()),
                    _ = tick.tick() => {
                        if let Some(status) = self.proxy.as_mut().and_then(process::exited) {
                            return Err(format!("the proxy exited ({status}); stopping"));
                        }
                        replicas::tend(&mut self.replicas, &self.exe, restart_after);
                        watch.poll();
                    }
                }
            }
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let replicas = self.replicas.iter_mut().filter_map(|r| r.child.as_mut());
        process::stop_all(self.proxy.iter_mut().chain(replicas));
    }
}

fn print_replicas(replicas: &[Replica], restart_after: Duration) {
    println!(
        "simulated replicas (kill one to watch failover; the demo restarts it after {} s):",
        restart_after.as_secs_f64()
    );
    for r in replicas {
        println!("  {:<28} pid {}", r.label, r.pid().unwrap_or(0));
    }
    println!();
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

status page: http://{admin}/admin/  (sign in with the token in conf/demo-admin-token)

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
