//! Tests of the prober and its HTTP client against real sockets on 127.0.0.1.

use super::*;
use crate::fleet::health::{ActiveState, HealthRules};
use crate::fleet::settings::PassiveSettings;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test server does with one connection.
#[derive(Clone)]
enum Reply {
    /// Write these bytes and close.
    Bytes(Vec<u8>),
    /// Read the request, then hold the connection open without answering.
    Hang,
}

struct TestServer {
    addr: SocketAddr,
    /// Requests (connections) accepted so far.
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn server(reply: impl Fn() -> Reply + Send + Sync + 'static) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let reply = Arc::new(reply);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let reply = Arc::clone(&reply);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match reply() {
                    Reply::Bytes(bytes) => {
                        let _ = sock.write_all(&bytes).await;
                        let _ = sock.shutdown().await;
                    }
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(sock);
                    }
                }
            });
        }
    });
    TestServer { addr, hits, task }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn status_server(status: u16) -> TestServer {
    server(move || Reply::Bytes(response(status, "ok"))).await
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

const MS: Duration = Duration::from_millis(1);

fn target(addr: SocketAddr, interval_ms: u64) -> ProbeTarget {
    let mut health = HealthSettings::for_flavour(Flavour::Vllm);
    health.interval = MS * interval_ms as u32;
    health.timeout = Duration::from_millis(500);
    let mut scrape = ScrapeSettings::for_flavour(Flavour::Vllm);
    scrape.interval = MS * interval_ms as u32;
    scrape.timeout = Duration::from_millis(500);
    let rules = HealthRules::new(&health, &PassiveSettings::default());
    let state = Arc::new(ReplicaState::new("c", addr, rules));
    ProbeTarget::new(state, health, scrape, Flavour::Vllm)
}

/// Poll `cond` every 5 ms; panic after `deadline`.
async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(MS * 5).await;
    }
}

fn start(prober: &Arc<Prober>) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let p = Arc::clone(prober);
    let task = tokio::spawn(async move { p.run(rx).await });
    (tx, task)
}

async fn stop(tx: watch::Sender<bool>, task: JoinHandle<()>) {
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run did not stop")
        .unwrap();
}

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn get_reads_status_and_body() {
    let s = status_server(503).await;
    let (status, body) = http_get(s.addr, "x", "/health", SEC, 1024).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn get_decodes_chunked_body() {
    let s = server(|| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let (status, body) = http_get(s.addr, "x", "/", SEC, 1024).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello world");
}

#[tokio::test]
async fn get_caps_the_body() {
    let s = status_server(200).await; // body "ok", Content-Length: 2
    let r = http_get(s.addr, "x", "/", SEC, 1).await;
    assert!(matches!(r, Err(ProbeError::BodyTooLarge)), "{r:?}");
    assert!(http_get(s.addr, "x", "/", SEC, 2).await.is_ok());
    // Chunked, so only counting the decoded bytes can catch it.
    let s = server(|| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let r = http_get(s.addr, "x", "/", SEC, 8).await;
    assert!(matches!(r, Err(ProbeError::BodyTooLarge)), "{r:?}");
}

#[tokio::test]
async fn get_refused_is_connect_error() {
    let r = http_get(dead_addr().await, "x", "/", SEC, 1024).await;
    assert!(matches!(r, Err(ProbeError::Connect(_))), "{r:?}");
}

#[tokio::test]
async fn get_times_out_on_a_silent_server() {
    let s = server(|| Reply::Hang).await;
    let t = Instant::now();
    let r = http_get(s.addr, "x", "/", MS * 100, 1024).await;
    assert!(matches!(r, Err(ProbeError::Timeout)), "{r:?}");
    assert!(t.elapsed() < SEC, "{:?}", t.elapsed());
    // Also when nobody ever accepts (the request sits in the backlog).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = http_get(l.local_addr().unwrap(), "x", "/", MS * 100, 1024).await;
    assert!(matches!(r, Err(ProbeError::Timeout)), "{r:?}");
}

#[tokio::test]
async fn get_reports_garbage_as_http_error() {
    let s = server(|| Reply::Bytes(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())).await;
    let r = http_get(s.addr, "x", "/", SEC, 1024).await;
    assert!(matches!(r, Err(ProbeError::Http(_))), "{r:?}");
}

#[tokio::test]
async fn a_200_admits_after_the_first_probe() {
    let s = status_server(200).await;
    let t = target(s.addr, 50);
    let prober = Prober::new();
    prober.set_targets(vec![t.clone()]);
    assert!(!t.state.is_eligible(Instant::now()));
    prober.probe_once_all().await;
    assert_eq!(t.state.health().active(), ActiveState::Healthy);
    assert!(t.state.is_eligible(Instant::now()));
    assert_eq!(s.hits(), 1);
}

#[tokio::test]
async fn a_503_or_refused_connect_keeps_a_starting_replica_out() {
    let s = status_server(503).await;
    let a = target(s.addr, 50);
    let b = target(dead_addr().await, 50);
    let prober = Prober::new();
    prober.set_targets(vec![a.clone(), b.clone()]);
    prober.probe_once_all().await;
    for t in [&a, &b] {
        assert_eq!(t.state.health().active(), ActiveState::Starting);
        assert!(!t.state.is_eligible(Instant::now()));
        assert!(t.state.last_error().is_some());
    }
}

#[tokio::test]
async fn a_503_takes_a_healthy_replica_down_and_the_hook_sees_it() {
    let status = Arc::new(AtomicU16::new(200));
    let st = Arc::clone(&status);
    let s = server(move || Reply::Bytes(response(st.load(Ordering::SeqCst), ""))).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let hook: TransitionHook = Arc::new(move |state, t| {
        sink.lock().unwrap().push((state.id().to_string(), *t));
    });
    let prober = Prober::new().with_transition_hook(hook);
    let t = target(s.addr, 50);
    prober.set_targets(vec![t.clone()]);
    prober.probe_once_all().await;
    status.store(503, Ordering::SeqCst);
    prober.probe_once_all().await;
    assert_eq!(t.state.health().active(), ActiveState::Unhealthy);
    assert!(!t.state.is_eligible(Instant::now()));
    let id = t.state.id().to_string();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                id.clone(),
                Transition::Up {
                    from: ActiveState::Starting
                }
            ),
            (
                id,
                Transition::Down {
                    from: ActiveState::Healthy
                }
            ),
        ]
    );
}

#[tokio::test]
async fn run_probes_new_targets_at_once_and_stops_removed_ones() {
    let a = status_server(200).await;
    let b = status_server(200).await;
    let ta = target(a.addr, 20);
    let tb = target(b.addr, 20);
    // A long interval: only the immediate first probe can admit it in time.
    let c = status_server(200).await;
    let tc = target(c.addr, 60_000);
    let prober = Arc::new(Prober::new().with_tick(MS * 10));
    prober.set_targets(vec![ta.clone(), tb.clone()]);
    let (tx, task) = start(&prober);
    wait_for("probes of both", 2 * SEC, || a.hits() >= 3 && b.hits() >= 3).await;
    assert!(ta.state.is_eligible(Instant::now()));
    prober.set_targets(vec![tb.clone(), tc.clone()]);
    wait_for("the added target's first probe", 2 * SEC, || {
        tc.state.is_eligible(Instant::now())
    })
    .await;
    tokio::time::sleep(MS * 50).await; // let a probe of `a` already started finish
    let a_hits = a.hits();
    let b_hits = b.hits();
    tokio::time::sleep(MS * 200).await;
    assert_eq!(a.hits(), a_hits, "removed target still probed");
    assert!(b.hits() >= b_hits + 3, "kept target no longer probed");
    assert_eq!(
        c.hits(),
        1,
        "the added target probed again before its interval"
    );
    stop(tx, task).await;
}

#[tokio::test]
async fn a_hanging_replica_neither_delays_others_nor_piles_up_probes() {
    let slow = server(|| Reply::Hang).await;
    let fast = status_server(200).await;
    let mut ts = target(slow.addr, 20);
    ts.health.timeout = SEC;
    let tf = target(fast.addr, 20);
    let prober = Arc::new(Prober::new().with_tick(MS * 10));
    prober.set_targets(vec![ts.clone(), tf.clone()]);
    let (tx, task) = start(&prober);
    wait_for("probes of the fast replica", 2 * SEC, || fast.hits() >= 5).await;
    assert_eq!(slow.hits(), 1, "a second probe while the first hangs");
    assert_eq!(ts.state.health().active(), ActiveState::Starting);
    stop(tx, task).await;
}

#[tokio::test]
async fn disabled_checks_do_nothing() {
    let s = status_server(200).await;
    let mut t = target(s.addr, 20);
    t.health.enabled = false;
    t.scrape.enabled = false;
    let prober = Arc::new(Prober::new().with_tick(MS * 10));
    prober.set_targets(vec![t]);
    prober.probe_once_all().await;
    let (tx, task) = start(&prober);
    tokio::time::sleep(MS * 100).await;
    stop(tx, task).await;
    assert_eq!(s.hits(), 0);
}

const VLLM_METRICS: &str = "# TYPE vllm:num_requests_running gauge\n\
    vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 4.0\n\
    vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0\n\
    # TYPE vllm:num_requests_waiting gauge\n\
    vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n\
    # TYPE vllm:kv_cache_usage_perc gauge\n\
    vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n\
    vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.25\n";

#[tokio::test]
async fn scrape_sets_load_and_a_failed_one_clears_it() {
    let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = Arc::clone(&ok);
    let s = server(move || {
        if flag.load(Ordering::SeqCst) {
            Reply::Bytes(response(200, VLLM_METRICS))
        } else {
            Reply::Bytes(response(500, "boom"))
        }
    })
    .await;
    let mut t = target(s.addr, 20);
    t.health.enabled = false;
    t.scrape.enabled = true;
    let prober = Arc::new(Prober::new().with_tick(MS * 10));
    prober.set_targets(vec![t.clone()]);
    let (tx, task) = start(&prober);
    wait_for("a load sample", 2 * SEC, || t.state.latest_load().is_some()).await;
    let load = t.state.latest_load().unwrap().sample;
    assert_eq!(load.running, Some(6.0));
    assert_eq!(load.waiting, Some(3.0));
    assert_eq!(load.kv_usage, Some(0.375));
    ok.store(false, Ordering::SeqCst);
    wait_for("the sample to be cleared", 2 * SEC, || {
        t.state.latest_load().is_none()
    })
    .await;
    stop(tx, task).await;
}

#[test]
fn next_due_keeps_cadence_without_bursts() {
    let t0 = Instant::now();
    let i = MS * 100;
    assert_eq!(next_due(t0, i, t0 + MS * 10), t0 + i);
    assert_eq!(next_due(t0, i, t0 + MS * 250), t0 + MS * 350);
}

#[test]
fn override_ports() {
    let mut t = target(SocketAddr::from(([10, 0, 0, 1], 8000)), 20);
    assert_eq!(t.health_addr(), t.addr);
    t.health.port = Some(9000);
    t.scrape.port = Some(8002);
    assert_eq!(t.health_addr().port(), 9000);
    assert_eq!(t.scrape_addr().port(), 8002);
    assert_eq!(t.scrape_addr().ip(), t.addr.ip());
}
