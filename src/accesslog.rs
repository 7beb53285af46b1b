//! The access log: one JSON line per request, written by a dedicated thread so the request
//! path never blocks on I/O. When the writer falls behind, lines are dropped and counted
//! (`tokengate_access_log_dropped_total`) rather than slowing requests down.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::AccessLogTarget;

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub key: &'a str,
    pub model: &'a str,
    pub cluster: &'a str,
    pub replica: &'a str,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usage_source: &'a str,
    pub truncated: bool,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub retries: usize,
    pub error: Option<&'a str>,
    pub tags: &'a [String],
    pub rules: &'a [String],
    pub rate_limit_class: Option<&'a str>,
    pub priority: Option<i32>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

static TARGET: OnceLock<AccessLogTarget> = OnceLock::new();
static STARTED: OnceLock<Option<SyncSender<String>>> = OnceLock::new();

/// Choose the target once at start-up. The writer thread starts lazily on the first line,
/// after Pingora may have daemonized (forking drops threads).
pub fn configure(target: AccessLogTarget) {
    let _ = TARGET.set(target);
}

fn sender() -> Option<&'static SyncSender<String>> {
    STARTED
        .get_or_init(|| {
            let target = TARGET.get().cloned().unwrap_or(AccessLogTarget::Stdout);
            let mut out: Box<dyn Write + Send> = match &target {
                AccessLogTarget::Off => return None,
                AccessLogTarget::Stdout => Box::new(std::io::stdout()),
                AccessLogTarget::File(path) => match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    Ok(f) => Box::new(BufWriter::new(f)),
                    Err(e) => {
                        log::error!("access log {}: {e}; logging to stdout", path.display());
                        Box::new(std::io::stdout())
                    }
                },
            };
            let (tx, rx) = sync_channel::<String>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || {
                    while let Ok(line) = rx.recv() {
                        let _ = out.write_all(line.as_bytes());
                        // Drain what queued meanwhile, then flush so `tail -f` sees it.
                        while let Ok(more) = rx.try_recv() {
                            let _ = out.write_all(more.as_bytes());
                        }
                        let _ = out.flush();
                    }
                    let _ = out.flush();
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    log::error!("cannot start the access log writer: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Queue one entry; never blocks.
pub fn write(entry: &Entry<'_>) {
    let Some(tx) = sender() else { return };
    let Ok(mut line) = serde_json::to_string(entry) else {
        return;
    };
    line.push('\n');
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            crate::metrics::ACCESS_LOG_DROPPED.inc();
        }
    }
}
