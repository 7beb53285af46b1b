//! `tokengate-load`: the load client of `bench/run.sh`.
//!
//! OpenAI-style `POST /v1/chat/completions` traffic over hyper 1 HTTP/1.1 keep-alive
//! connections (one per worker, reopened when the server closes it). Every response is checked:
//! status 200, the completion token count (`usage.completion_tokens`, or the number of content
//! deltas of a stream without usage) equal to the requested `max_tokens`, and `data: [DONE]` at
//! the end of a stream. It prints one JSON object: requests/s, latency and time-to-first-token
//! percentiles, errors by kind, and the CPU time and memory of the watched processes (the proxy
//! under test) measured from `/proc` around the run.
//!
//! Bounded in count (`--requests`) and time (`--duration-s`, then in-flight requests get
//! `--timeout-s` to finish). Not a test: nothing here runs in CI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// a bench fails loudly
// libc sysconf/getrusage: CPU and RSS figures of this process, read-only FFI.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tokengate-load",
    about = "OpenAI-style load client for bench/run.sh"
)]
struct Args {
    /// Server `ip:port`; repeatable: worker i uses target i mod n.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    #[arg(long)]
    model: String,
    /// Sent as `Authorization: Bearer …` (every peer gets it; only tokengate checks it).
    #[arg(long)]
    api_key: Option<String>,
    /// Requests in total (successes + errors).
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Stop starting requests after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Per-request bound; also how long in-flight requests get after `duration_s`.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Workers, each with its own connection.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Streaming (`stream: true`, `stream_options.include_usage: true`).
    #[arg(long)]
    stream: bool,
    /// Completion tokens requested (`max_tokens`) and expected back.
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Bytes of the user message.
    #[arg(long, default_value_t = 64)]
    prompt_bytes: usize,
    /// Prefix-heavy traffic: worker i sends a ~2 KiB system prompt shared by every worker with
    /// the same `i mod prefixes` (0: no system prompt).
    #[arg(long, default_value_t = 0)]
    prefixes: usize,
    /// Length in bytes of each shared system prompt (default: the ~2 KiB one).
    #[arg(long)]
    system_bytes: Option<usize>,
    /// Many users: every request's user message starts with a unique id, so only the system
    /// prompt is shared.
    #[arg(long)]
    unique_users: bool,
    /// `x-sim-itl-ms` header: the simulator's delay between tokens.
    #[arg(long)]
    itl_ms: Option<u64>,
    /// Open at most this many connections / request heads at a time (ramp for huge counts).
    #[arg(long, default_value_t = 256)]
    ramp: usize,
    /// One request per connection (each stream its own connection).
    #[arg(long)]
    single_use: bool,
    /// PIDs whose CPU time and memory are measured (summed), e.g. the proxy's.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<u32>,
    /// PIDs of the upstream simulators (CPU only, for context).
    #[arg(long = "sim-pid")]
    sim_pids: Vec<u32>,
    /// `POST` this admin URL path every `--reload-every-ms` during the run (tokengate reload).
    #[arg(long)]
    reload_target: Option<SocketAddr>,
    #[arg(long, default_value = "/admin/reload")]
    reload_path: String,
    #[arg(long)]
    reload_token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    reload_every_ms: u64,
    /// Free text copied to the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Tokio worker threads of the client.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Default)]
struct Shared {
    latencies_us: Mutex<Vec<u32>>,
    ttft_us: Mutex<Vec<u32>>,
    itl_us: Mutex<Vec<u32>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ok: AtomicU64,
    issued: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicI64,
    peak_in_flight: AtomicI64,
    stop: AtomicBool,
}

impl Shared {
    fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().unwrap().entry(kind.into()).or_insert(0) += 1;
    }
}

type Sender = SendRequest<Full<Bytes>>;

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = runtime.block_on(run(args));
    println!("{out}");
}

fn request_body(args: &Args, prefix: Option<usize>) -> Bytes {
    request_body_for(args, prefix, None)
}

fn request_body_for(args: &Args, prefix: Option<usize>, user_id: Option<String>) -> Bytes {
    let prompt = "lorem ipsum dolor sit amet ".repeat(args.prompt_bytes / 27 + 1);
    let content = match user_id {
        Some(id) => format!("user {id}: {}", &prompt[..args.prompt_bytes]),
        None => prompt[..args.prompt_bytes].to_string(),
    };
    let user = json!({"role": "user", "content": content});
    let messages = match prefix {
        Some(k) => {
            let mut system =
                format!("You are assistant #{k}. ") + &"Follow the house style. ".repeat(90);
            if let Some(n) = args.system_bytes {
                system = format!("You are assistant #{k}. ")
                    + &"Follow the house style. ".repeat(n / 24 + 1);
                system.truncate(n);
            }
            json!([{"role": "system", "content": system}, user])
        }
        None => json!([user]),
    };
    let mut body = json!({
        "model": args.model,
        "messages": messages,
        "max_tokens": args.max_tokens,
    });
    if args.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    Bytes::from(serde_json::to_vec(&body).expect("json"))
}

#[allow(clippy::too_many_lines)] // a bench binary, outside the src/ function rule
async fn run(args: Args) -> Value {
    let args = Arc::new(args);
    let body = request_body(&args, None);
    let shared = Arc::new(Shared::default());
    let ramp = Arc::new(Semaphore::new(args.ramp.max(1)));
    let duration = Duration::from_secs_f64(args.duration_s);
    let timeout = Duration::from_secs_f64(args.timeout_s);

    let before = ProcSample::take(&args.watch_pids);
    let sims_before = ProcSample::take(&args.sim_pids);
    let client_before = self_cpu_ns();
    let start = Instant::now();

    // Memory sampler (peak RSS of the watched processes while the load runs).
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let pids = args.watch_pids.clone();
        let stop = Arc::clone(&sampler_stop);
        tokio::spawn(async move {
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kb(&pids));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak.max(rss_kb(&pids))
        })
    };
    let reloader = args.reload_target.map(|addr| {
        let args = Arc::clone(&args);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { reload_loop(addr, &args, &shared).await })
    });

    let mut workers = Vec::with_capacity(args.concurrency);
    for index in 0..args.concurrency {
        let args = Arc::clone(&args);
        let shared = Arc::clone(&shared);
        let body = if args.prefixes > 0 {
            request_body(&args, Some(index % args.prefixes))
        } else {
            body.clone()
        };
        let ramp = Arc::clone(&ramp);
        workers.push(tokio::spawn(async move {
            worker(index, &args, &shared, body, &ramp, start + duration).await
        }));
    }
    // Stop starting requests at the time bound; give in-flight ones `timeout` more.
    let all = async {
        for w in workers {
            let _ = w.await;
        }
    };
    tokio::pin!(all);
    let hard_end = tokio::time::sleep(duration + timeout + Duration::from_secs(5));
    tokio::pin!(hard_end);
    tokio::select! {
        _ = &mut all => {}
        _ = &mut hard_end => {
            shared.stop.store(true, Ordering::Relaxed);
            let stuck = shared.in_flight.load(Ordering::Relaxed).max(0) as u64;
            if stuck > 0 {
                *shared.errors.lock().unwrap().entry("hard_timeout".into()).or_insert(0) += stuck;
            }
        }
    }
    let elapsed = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let after = ProcSample::take(&args.watch_pids);
    let sims_after = ProcSample::take(&args.sim_pids);
    let client_cpu_ns = self_cpu_ns().saturating_sub(client_before);
    sampler_stop.store(true, Ordering::Relaxed);
    let peak_rss_kb = sampler.await.unwrap_or(0);
    let (reloads_ok, reloads_failed) = match reloader {
        Some(handle) => handle.await.unwrap_or((0, 1)),
        None => (0, 0),
    };

    let ok = shared.ok.load(Ordering::Relaxed);
    let mut errors = shared.errors.lock().unwrap().clone();
    if reloads_failed > 0 {
        errors.insert("reload_failed".into(), reloads_failed);
    }
    let error_total: u64 = errors.values().sum();
    let mut lat = std::mem::take(&mut *shared.latencies_us.lock().unwrap());
    let mut ttft = std::mem::take(&mut *shared.ttft_us.lock().unwrap());
    let mut itl = std::mem::take(&mut *shared.itl_us.lock().unwrap());
    let proxy_cpu_ns = after.cpu_ns.saturating_sub(before.cpu_ns);
    let per = |ns: u64| {
        if ok > 0 {
            ns as f64 / 1000.0 / ok as f64
        } else {
            0.0
        }
    };
    json!({
        "label": args.label,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "stream": args.stream,
        "max_tokens": args.max_tokens,
        "prompt_bytes": args.prompt_bytes,
        "ok": ok,
        "issued": shared.issued.load(Ordering::Relaxed),
        "errors": error_total,
        "error_kinds": errors,
        "connections": shared.connections.load(Ordering::Relaxed),
        "elapsed_s": elapsed.as_secs_f64(),
        "rps": ok as f64 / elapsed.as_secs_f64(),
        "latency_ms": percentiles(&mut lat),
        "ttft_ms": percentiles(&mut ttft),
        "itl_ms": percentiles(&mut itl),
        "peak_in_flight": shared.peak_in_flight.load(Ordering::Relaxed),
        "proxy": {
            "pids": args.watch_pids,
            "cpu_ms": proxy_cpu_ns as f64 / 1e6,
            "cpu_us_per_req": per(proxy_cpu_ns),
            "rss_kb_before": before.rss_kb,
            "rss_kb_after": after.rss_kb,
            "rss_kb_peak": peak_rss_kb,
            "hwm_kb": after.hwm_kb,
        },
        "sims": {
            "cpu_ms": sims_after.cpu_ns.saturating_sub(sims_before.cpu_ns) as f64 / 1e6,
            "cpu_us_per_req": per(sims_after.cpu_ns.saturating_sub(sims_before.cpu_ns)),
        },
        "client": {
            "cpu_ms": client_cpu_ns as f64 / 1e6,
            "cpu_us_per_req": per(client_cpu_ns),
        },
        "reloads_ok": reloads_ok,
        "reloads_failed": reloads_failed,
    })
}

fn percentiles(values: &mut [u32]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1] as f64 / 1000.0
    };
    json!({
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": at(1.0),
        "n": values.len(),
    })
}

async fn connect(addr: SocketAddr, shared: &Shared) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "handshake".to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    shared.connections.fetch_add(1, Ordering::Relaxed);
    Ok(sender)
}

async fn worker(
    index: usize,
    args: &Args,
    shared: &Shared,
    body: Bytes,
    ramp: &Semaphore,
    deadline: Instant,
) {
    let addr = args.target[index % args.target.len()];
    let host = addr.to_string();
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut sender: Option<Sender> = None;
    let mut timings = Timings::default();
    let mut sent = 0u64;
    let mut body = body;
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        if shared.issued.fetch_add(1, Ordering::Relaxed) >= args.requests {
            shared.issued.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        let mut reuse = None;
        if let Some(mut s) = sender.take() {
            if s.ready().await.is_ok() {
                reuse = Some(s);
            }
        }
        // The ramp permit covers connecting and the response head, so a burst of thousands
        // of new connections does not overflow listen backlogs.
        let permit = if reuse.is_none() || args.single_use {
            Some(ramp.acquire().await.expect("semaphore"))
        } else {
            None
        };
        let mut s = match reuse {
            Some(s) => s,
            None => match tokio::time::timeout(timeout, connect(addr, shared)).await {
                Ok(Ok(s)) => s,
                Ok(Err(kind)) => {
                    shared.error(kind);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    shared.error("connect: timeout");
                    continue;
                }
            },
        };
        if args.unique_users {
            let prefix = (args.prefixes > 0).then(|| index % args.prefixes);
            body = request_body_for(args, prefix, Some(format!("{index}-{sent}")));
            sent += 1;
        }
        let request = build_request(args, &host, body.clone());
        let started = Instant::now();
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = shared.in_flight.load(Ordering::Relaxed);
        shared
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        let outcome =
            tokio::time::timeout(timeout, exchange(&mut s, request, args, started, permit)).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(Ok(result)) => {
                timings.record(args, started.elapsed(), result.ttft);
                shared.ok.fetch_add(1, Ordering::Relaxed);
                if result.keep_alive && !args.single_use {
                    sender = Some(s);
                }
            }
            Ok(Err(kind)) => shared.error(kind),
            Err(_) => shared.error("timeout"),
        }
    }
    shared
        .latencies_us
        .lock()
        .unwrap()
        .extend(timings.latencies);
    shared.ttft_us.lock().unwrap().extend(timings.ttfts);
    shared.itl_us.lock().unwrap().extend(timings.itls);
}

fn build_request(args: &Args, host: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut builder = Request::post(args.path.as_str())
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(key) = &args.api_key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if let Some(itl) = args.itl_ms {
        builder = builder.header("x-sim-itl-ms", itl.to_string());
    }
    builder.body(Full::new(body)).expect("request")
}

/// One worker's latencies, first-token times and mean inter-token latencies, in µs.
#[derive(Default)]
struct Timings {
    latencies: Vec<u32>,
    ttfts: Vec<u32>,
    itls: Vec<u32>,
}

impl Timings {
    fn record(&mut self, args: &Args, latency: Duration, ttft: Option<Duration>) {
        let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
        self.latencies.push(us(latency));
        if let Some(t) = ttft {
            self.ttfts.push(us(t));
            // Mean inter-token latency of this request.
            if args.max_tokens > 1 {
                let tokens = u32::try_from(args.max_tokens - 1).unwrap_or(u32::MAX);
                self.itls.push(us(latency.saturating_sub(t) / tokens));
            }
        }
    }
}

struct Exchange {
    ttft: Option<Duration>,
    keep_alive: bool,
}

async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    args: &Args,
    started: Instant,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> Result<Exchange, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {}", short_error(&e)))?;
    drop(permit);
    let status = response.status();
    let keep_alive = !response
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut ttft = None;
    let mut scanned = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {}", short_error(&e)))?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            if args.stream && ttft.is_none() {
                let from = scanned.saturating_sub(CONTENT_KEY.len() + 1);
                if first_content(&buf[from..]) {
                    ttft = Some(started.elapsed());
                }
                scanned = buf.len();
            }
        }
    }
    if status != StatusCode::OK {
        return Err(format!("status {}", status.as_u16()));
    }
    let tokens = if args.stream {
        check_stream(&buf)?
    } else {
        let value: Value = serde_json::from_slice(&buf).map_err(|_| "invalid json".to_string())?;
        value["usage"]["completion_tokens"]
            .as_u64()
            .ok_or_else(|| "no usage".to_string())?
    };
    if tokens != args.max_tokens {
        return Err(format!("tokens {tokens} != {}", args.max_tokens));
    }
    Ok(Exchange { ttft, keep_alive })
}

const CONTENT_KEY: &[u8] = b"\"content\":\"";

/// A delta with non-empty content in this piece of an SSE stream.
fn first_content(piece: &[u8]) -> bool {
    memchr::memmem::find_iter(piece, CONTENT_KEY).any(|at| {
        piece
            .get(at + CONTENT_KEY.len())
            .is_some_and(|&c| c != b'"')
    })
}

/// Completion tokens of a finished stream: `usage.completion_tokens` of the last usage chunk,
/// else the number of non-empty content deltas. Requires `data: [DONE]` as the last event.
fn check_stream(buf: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(buf).map_err(|_| "stream not utf-8".to_string())?;
    let events: Vec<&str> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if events.last().copied() != Some("data: [DONE]") {
        return Err("stream without [DONE]".into());
    }
    for event in events.iter().rev().skip(1).take(3) {
        if !event.contains("\"usage\"") {
            continue;
        }
        let data = event.strip_prefix("data: ").unwrap_or(event);
        if let Ok(value) = serde_json::from_str::<Value>(data) {
            if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                return Ok(n);
            }
        }
    }
    Ok(events
        .iter()
        .filter(|e| first_content(e.as_bytes()))
        .count() as u64)
}

fn short_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    if let Some(source) = e.source() {
        text = format!("{text} ({source})");
    }
    text.chars().take(80).collect()
}

async fn reload_loop(addr: SocketAddr, args: &Args, shared: &Shared) -> (u64, u64) {
    let token = args
        .reload_token_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let (mut ok, mut failed) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(args.reload_every_ms));
    tick.tick().await;
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let attempt = async {
            let mut sender = connect(addr, shared).await?;
            let request = Request::post(args.reload_path.as_str())
                .header("host", addr.to_string())
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            if status == StatusCode::OK {
                Ok(())
            } else {
                Err(format!("reload status {status}"))
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                eprintln!("reload failed: {e}");
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    // Connections opened for reloads are not load connections.
    shared.connections.fetch_sub(ok + failed, Ordering::Relaxed);
    (ok, failed)
}

/// CPU time (utime + stime from `/proc/PID/stat`) and memory of a set of processes.
#[derive(Default)]
struct ProcSample {
    cpu_ns: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

impl ProcSample {
    fn take(pids: &[u32]) -> ProcSample {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut sample = ProcSample::default();
        for pid in pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
                if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
                    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                    sample.cpu_ns += (utime + stime) * 1_000_000_000 / ticks;
                }
            }
            sample.rss_kb += status_kb(*pid, "VmRSS:");
            sample.hwm_kb += status_kb(*pid, "VmHWM:");
        }
        sample
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kb(*p, "VmRSS:")).sum()
}

fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
