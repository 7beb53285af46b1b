//! The demo's simulated replicas: one `tokengate sim` per replica address, restarted after a
//! delay when one dies, so killing a replica shows failover instead of ending the demo.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::process;
use crate::config::Config;

pub struct Replica {
    /// `cluster@ip:port`, what the simulator reports as its name.
    pub label: String,
    pub addr: SocketAddr,
    args: Vec<String>,
    pub child: Option<Child>,
    restart_at: Option<Instant>,
}

impl Replica {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn start(&mut self, exe: &Path) -> Result<(), String> {
        let mut cmd = Command::new(exe);
        cmd.args(&self.args);
        let mut child = process::spawn(cmd, true)?;
        let ready = process::wait_for_listening(&mut child, self.addr);
        self.child = Some(child);
        ready
    }
}

/// One replica per distinct address in the config (the demo canary shares one with vllm-a).
pub fn from_config(config: &Config) -> Vec<Replica> {
    let mut out: Vec<Replica> = Vec::new();
    for cluster in &config.clusters {
        // Config order: like vLLM, the simulator answers with its first served name.
        let mut served: Vec<&str> = Vec::new();
        for route in config.routes_in_order() {
            if route.cluster.name == cluster.name && !served.contains(&route.served_name.as_str()) {
                served.push(&route.served_name);
            }
        }
        for replica in &cluster.replicas {
            if out.iter().any(|r| r.addr == replica.addr) {
                continue;
            }
            let label = format!("{}@{}", cluster.name, replica.addr);
            let mut args: Vec<String> = vec![
                "sim".into(),
                "--listen".into(),
                replica.addr.to_string(),
                "--flavour".into(),
                cluster.flavour.as_str().into(),
                "--replica-name".into(),
                label.clone(),
            ];
            // The batching engine (queue, prefix cache, batch-dependent decode); 25 ms/token
            // so streams are easy to watch.
            args.extend(
                [
                    "--engine",
                    "batching",
                    "--decode-ms",
                    "25",
                    "--tokens",
                    "24",
                ]
                .map(String::from),
            );
            for name in &served {
                args.extend(["--served-model-name".to_string(), name.to_string()]);
            }
            out.push(Replica {
                label,
                addr: replica.addr,
                args,
                child: None,
                restart_at: None,
            });
        }
    }
    out
}

pub fn start_all(replicas: &mut [Replica], exe: &Path) -> Result<(), String> {
    replicas.iter_mut().try_for_each(|r| r.start(exe))
}

/// One supervision step: notice replicas that died, restart those whose delay is over.
pub fn tend(replicas: &mut [Replica], exe: &Path, restart_after: Duration) {
    let now = Instant::now();
    for r in replicas.iter_mut() {
        if let Some(child) = r.child.as_mut() {
            if let Some(status) = process::exited(child) {
                println!(
                    "demo: replica {} (pid {}) exited ({status}); the proxy keeps serving from \
                     the others; restarting it in {} s",
                    r.label,
                    child.id(),
                    restart_after.as_secs_f64()
                );
                r.child = None;
                r.restart_at = Some(now + restart_after);
            }
        }
        if r.restart_at.is_some_and(|at| at <= now) {
            r.restart_at = None;
            match r.start(exe) {
                Ok(()) => println!(
                    "demo: replica {} restarted (pid {}); it gets traffic again once its health \
                     checks pass",
                    r.label,
                    r.pid().unwrap_or(0)
                ),
                Err(e) => {
                    println!(
                        "demo: cannot restart replica {}: {e}; trying again in {} s",
                        r.label,
                        restart_after.as_secs_f64()
                    );
                    if let Some(mut child) = r.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    r.restart_at = Some(now + restart_after);
                }
            }
        }
    }
}
