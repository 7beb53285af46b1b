//! The access log: one JSON line per request. Requests append their line to a shared buffer
//! (a short, rarely contended lock; no syscall, no thread wake-up) and a writer thread drains
//! it every few milliseconds, so writing the log never blocks the request path and costs no
//! context switch per request. When the writer falls behind, lines are dropped and counted
//! (`tokengate_access_log_dropped_total`) rather than growing memory or slowing requests.

use std::io::{BufWriter, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AccessLogTarget;

/// How often the writer drains the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Bytes buffered before lines are dropped (the writer is stuck, e.g. a full disk).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// One request, as logged: built once per request, written to the log and kept in the
/// recent-requests ring (`GET /admin/requests`). Never a secret (`key` is the key's name) nor
/// prompt text.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    /// The client's own `X-Request-ID` (sanitised), `null` if none or dropped.
    pub client_request_id: Option<String>,
    pub method: String,
    pub path: String,
    /// The API surface (`chat_completions`, `messages`, ...; `-` when the path is unknown).
    pub endpoint: &'static str,
    pub key: String,
    pub model: String,
    pub cluster: String,
    pub replica: String,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usage_source: &'static str,
    pub truncated: bool,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub retries: usize,
    pub error: Option<String>,
    pub tags: Vec<String>,
    pub rules: Vec<String>,
    pub rate_limit_class: Option<String>,
    pub priority: Option<i32>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

static TARGET: OnceLock<AccessLogTarget> = OnceLock::new();
/// Lines waiting for the writer; `None` when the log is off.
static PENDING: OnceLock<Option<Mutex<Vec<u8>>>> = OnceLock::new();

/// Choose the target once at start-up. The writer thread starts lazily with the first line,
/// after Pingora may have daemonized (forking drops threads).
pub fn configure(target: AccessLogTarget) {
    let _ = TARGET.set(target);
}

fn pending() -> Option<&'static Mutex<Vec<u8>>> {
    PENDING
        .get_or_init(|| {
            let target = TARGET.get().cloned().unwrap_or(AccessLogTarget::Stdout);
            let out: Box<dyn Write + Send> = match &target {
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
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer(out));
            match spawned {
                Ok(_) => Some(Mutex::new(Vec::with_capacity(64 * 1024))),
                Err(e) => {
                    log::error!("cannot start the access log writer: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn writer(mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(Some(buffer)) = PENDING.get() else {
            continue;
        };
        if let Ok(mut pending) = buffer.lock() {
            std::mem::swap(&mut *pending, &mut batch);
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
        }
    }
}

/// Queue one entry; never blocks on I/O.
pub fn write(entry: &Entry) {
    let Some(buffer) = pending() else { return };
    // One line buffer per worker thread, kept: no allocation and no regrowth per request.
    LINE.with_borrow_mut(|line| {
        line.clear();
        if serde_json::to_writer(&mut *line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        match buffer.lock() {
            Ok(mut pending) if pending.len() + line.len() <= MAX_BUFFERED => {
                pending.extend_from_slice(line)
            }
            _ => crate::metrics::ACCESS_LOG_DROPPED.inc(),
        }
        if line.capacity() > MAX_KEPT_LINE {
            *line = Vec::with_capacity(LINE_CAPACITY);
        }
    });
}

const LINE_CAPACITY: usize = 1024;
/// A line longer than this (many tags) is not kept for the next request.
const MAX_KEPT_LINE: usize = 16 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(LINE_CAPACITY));
}
