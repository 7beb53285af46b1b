//! The demo's child processes: spawning with `PR_SET_PDEATHSIG`, readiness, stopping.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawn with the parent-death signal set, so no child outlives a supervisor killed outright.
/// Call it from the main thread only: the signal fires when the *thread* that forked exits.
pub fn spawn(mut cmd: Command, capture_stdout: bool) -> Result<Child, String> {
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
pub fn wait_for_listening(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
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

pub fn wait_for_port(addr: SocketAddr) -> Result<(), String> {
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

/// `Some(status)` once the child has exited (reaped).
pub fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().ok().flatten()
}

/// SIGINT (Pingora's fast shutdown; the simulator exits on it too) to every child, then wait
/// up to 3 s for all of them together before killing the rest.
pub fn stop_all<'a>(children: impl IntoIterator<Item = &'a mut Child>) {
    let children: Vec<&mut Child> = children.into_iter().collect();
    for child in &children {
        // SAFETY: plain kill(2) on a pid we own and have not reaped yet.
        // Allowed: std can only SIGKILL a child; SIGINT is the clean stop.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for child in children {
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
