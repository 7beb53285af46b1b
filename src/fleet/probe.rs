//! The active side of replica health: background tasks that probe each replica's health path
//! and scrape its metrics, feeding [`ReplicaState`]. Plain tokio, no Pingora types.
//!
//! - [`http_get`]: a minimal HTTP/1.1 GET (one connection per call, `Connection: close`, one
//!   overall deadline, capped body) on hyper's low-level client.
//! - [`Prober`]: holds the current [`ProbeTarget`]s (replaced on every config reload) and
//!   runs the schedule: every target's health probe and scrape on their own intervals, each in
//!   its own task, so one slow replica never delays another; at most one probe and one scrape
//!   in flight per replica.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Flavour;
use crate::fleet::health::Transition;
use crate::fleet::replica::{LoadSample, ReplicaId, ReplicaState};
use crate::fleet::scrape::{extract_load, MAX_SCRAPE_BYTES};
use crate::fleet::settings::{probe_status_is_healthy, HealthSettings, ScrapeSettings};

/// Health probes answer with a few bytes; anything bigger is not a health endpoint.
pub const MAX_PROBE_BODY_BYTES: usize = 64 << 10;
/// How often the scheduler looks for due probes by default.
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);

const USER_AGENT_VALUE: &str = concat!("tokengate-probe/", env!("CARGO_PKG_VERSION"));

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// TCP connect failed (refused, unreachable, ...).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Connect, request and body together took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// Invalid request, malformed response, connection closed early.
    #[error("http error: {0}")]
    Http(String),
    /// The body was longer than the caller's cap.
    #[error("response body too large")]
    BodyTooLarge,
}

fn http_err(e: impl fmt::Display) -> ProbeError {
    ProbeError::Http(e.to_string())
}

/// `GET path` from `addr` over a fresh connection (TCP_NODELAY, `Connection: close`).
/// `timeout` bounds everything (connect, request, whole body); a body longer than `max_body`
/// fails with [`ProbeError::BodyTooLarge`]. Returns the status and the decoded body
/// (chunked transfer coding removed) whatever the status.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), ProbeError> {
    match tokio::time::timeout(timeout, get_inner(addr, host, path, max_body)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn get_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    max_body: usize,
) -> Result<(u16, Bytes), ProbeError> {
    let req = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(format!("invalid request: {e}")))?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    // Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let exchange = async move {
        sender.ready().await.map_err(http_err)?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if body.size_hint().lower() > max_body as u64 {
            return Err(ProbeError::BodyTooLarge); // Content-Length says so already
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http_err)?;
            if let Ok(data) = frame.into_data() {
                if buf.len().saturating_add(data.len()) > max_body {
                    return Err(ProbeError::BodyTooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((status, buf.freeze()))
    };
    // Drive the connection in this same future (no detached task), so the caller's timeout
    // or cancellation drops the socket with it.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        _ = &mut conn => {
            // The connection finished (or failed) first; whatever it delivered or the error it
            // reported is now in the exchange's channels.
            exchange.await
        }
    }
}

/// Called for every health transition a probe causes (after it was logged), e.g. to bump a
/// metric.
pub type TransitionHook = Arc<dyn Fn(&ReplicaState, &Transition) + Send + Sync>;

/// One replica to probe and scrape.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub state: Arc<ReplicaState>,
    /// The replica's serving address; `health.port` / `scrape.port` override its port.
    pub addr: SocketAddr,
    pub health: HealthSettings,
    pub scrape: ScrapeSettings,
    pub flavour: Flavour,
}

impl ProbeTarget {
    /// A target at the replica's own address.
    pub fn new(
        state: Arc<ReplicaState>,
        health: HealthSettings,
        scrape: ScrapeSettings,
        flavour: Flavour,
    ) -> ProbeTarget {
        let addr = state.addr();
        ProbeTarget {
            state,
            addr,
            health,
            scrape,
            flavour,
        }
    }

    pub fn health_addr(&self) -> SocketAddr {
        with_port(self.addr, self.health.port)
    }

    pub fn scrape_addr(&self) -> SocketAddr {
        with_port(self.addr, self.scrape.port)
    }
}

fn with_port(mut addr: SocketAddr, port: Option<u16>) -> SocketAddr {
    if let Some(port) = port {
        addr.set_port(port);
    }
    addr
}

/// Runs the health probes and scrapes of the current targets.
///
/// Create one, [`set_targets`](Prober::set_targets) at start and on every reload, optionally
/// [`probe_once_all`](Prober::probe_once_all) before reporting ready, then keep
/// [`run`](Prober::run) going in a background task until shutdown.
pub struct Prober {
    targets: ArcSwap<Vec<ProbeTarget>>,
    on_transition: Option<TransitionHook>,
    tick: Duration,
}

impl Default for Prober {
    fn default() -> Self {
        Prober::new()
    }
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("targets", &self.targets.load().len())
            .field("tick", &self.tick)
            .field("on_transition", &self.on_transition.is_some())
            .finish()
    }
}

impl Prober {
    /// No targets, no hook, the default tick.
    pub fn new() -> Prober {
        Prober {
            targets: ArcSwap::from_pointee(Vec::new()),
            on_transition: None,
            tick: DEFAULT_TICK,
        }
    }

    /// Call `hook` on every transition a probe causes.
    pub fn with_transition_hook(mut self, hook: TransitionHook) -> Prober {
        self.on_transition = Some(hook);
        self
    }

    /// How often [`run`](Prober::run) looks for due work (default 50 ms; it also bounds how
    /// late a probe can start).
    pub fn with_tick(mut self, tick: Duration) -> Prober {
        self.tick = tick.max(Duration::from_millis(1));
        self
    }

    /// Replace the target list. New replicas are probed (and scraped) on `run`'s next tick;
    /// removed ones stop, their in-flight probe cancelled. Replicas are matched by
    /// [`ReplicaId`], so a kept replica keeps its schedule.
    pub fn set_targets(&self, targets: Vec<ProbeTarget>) {
        self.targets.store(Arc::new(targets));
    }

    pub fn targets(&self) -> Arc<Vec<ProbeTarget>> {
        self.targets.load_full()
    }

    /// One health probe of every target with active checks, concurrently; returns when all
    /// finished (each bounded by its own timeout).
    pub async fn probe_once_all(&self) {
        let mut set = JoinSet::new();
        for target in self.targets.load().iter() {
            if target.health.enabled {
                set.spawn(probe_target(target.clone(), self.on_transition.clone()));
            }
        }
        while set.join_next().await.is_some() {}
    }

    /// The schedule, until `shutdown` turns true (or its sender is dropped). A new target's
    /// first probe and scrape run at once, later ones every `interval`; a probe still running
    /// when the next one is due delays that one instead of piling up.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut schedule: HashMap<ReplicaId, Slot> = HashMap::new();
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = ticker.tick() => self.dispatch(&mut schedule, Instant::now()),
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        for slot in schedule.values_mut() {
            slot.abort();
        }
    }

    /// Start every due probe and scrape; forget (and cancel) replicas no longer targeted.
    fn dispatch(&self, schedule: &mut HashMap<ReplicaId, Slot>, now: Instant) {
        let targets = self.targets.load();
        let mut current: HashSet<&ReplicaId> = HashSet::with_capacity(targets.len());
        for target in targets.iter() {
            let id = target.state.id();
            if !current.insert(id) {
                continue; // listed twice: one schedule is enough
            }
            let slot = schedule.entry(id.clone()).or_insert_with(|| Slot::new(now));
            if target.health.enabled && now >= slot.next_probe && !is_running(&slot.probe_task) {
                slot.next_probe = next_due(slot.next_probe, target.health.interval, now);
                slot.probe_task = Some(tokio::spawn(probe_target(
                    target.clone(),
                    self.on_transition.clone(),
                )));
            }
            if target.scrape.enabled && now >= slot.next_scrape && !is_running(&slot.scrape_task) {
                slot.next_scrape = next_due(slot.next_scrape, target.scrape.interval, now);
                slot.scrape_task = Some(tokio::spawn(scrape_target(target.clone())));
            }
        }
        schedule.retain(|id, slot| {
            let keep = current.contains(id);
            if !keep {
                slot.abort();
            }
            keep
        });
    }
}

/// Per-replica schedule kept by `run`.
struct Slot {
    next_probe: Instant,
    next_scrape: Instant,
    probe_task: Option<JoinHandle<()>>,
    scrape_task: Option<JoinHandle<()>>,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            next_probe: now,
            next_scrape: now,
            probe_task: None,
            scrape_task: None,
        }
    }

    fn abort(&mut self) {
        for task in [self.probe_task.take(), self.scrape_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

fn is_running(task: &Option<JoinHandle<()>>) -> bool {
    task.as_ref().is_some_and(|t| !t.is_finished())
}

/// Keep the cadence (`due + interval`) unless that is already past (a slow probe or a long
/// pause), then start over from now rather than firing a burst to catch up.
fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let interval = interval.max(Duration::from_millis(1));
    let next = due + interval;
    if next > now {
        next
    } else {
        now + interval
    }
}

/// One health probe: GET, feed the state machine, log and report a transition.
async fn probe_target(target: ProbeTarget, hook: Option<TransitionHook>) {
    let addr = target.health_addr();
    let host = addr.to_string();
    let result = http_get(
        addr,
        &host,
        &target.health.path,
        target.health.timeout,
        MAX_PROBE_BODY_BYTES,
    )
    .await;
    if let Err(ProbeError::Connect(io)) = &result {
        if super::health::is_local_resource_error(io) {
            // Our own shortage (e.g. no file descriptors), says nothing about the replica.
            log::warn!("health probe of {addr} skipped: {io}");
            return;
        }
    }
    let (success, failure) = match &result {
        Ok((status, _)) if probe_status_is_healthy(*status) => (true, String::new()),
        Ok((status, _)) => (false, format!("status {status}")),
        Err(e) => (false, e.to_string()),
    };
    let state = &target.state;
    let transition = state.on_probe(success, Instant::now());
    match transition {
        Some(t) => {
            log_transition(state, &t, &target.health.path, addr, &failure);
            if let Some(hook) = &hook {
                hook(state, &t);
            }
        }
        None if !success => log::debug!(
            "replica {}: health probe GET http://{addr}{} failed: {failure}",
            state.id(),
            target.health.path
        ),
        None => {}
    }
}

fn log_transition(
    state: &ReplicaState,
    t: &Transition,
    path: &str,
    addr: SocketAddr,
    failure: &str,
) {
    let id = state.id();
    match t {
        Transition::Up { from } => {
            log::info!("replica {id} is up (was {from:?}): health probe passed")
        }
        Transition::Down { from } => log::warn!(
            "replica {id} is down (was {from:?}): health probe GET http://{addr}{path} failed: {failure}"
        ),
        Transition::Ejected { cooldown } => {
            log::warn!("replica {id} ejected for {cooldown:?}")
        }
    }
}

/// One scrape: GET the metrics, store the load sample, or forget the old one on failure.
async fn scrape_target(target: ProbeTarget) {
    let state = &target.state;
    let addr = target.scrape_addr();
    let host = addr.to_string();
    let result = http_get(
        addr,
        &host,
        &target.scrape.path,
        target.scrape.timeout,
        MAX_SCRAPE_BYTES,
    )
    .await;
    let failure = match result {
        Ok((200, body)) => {
            let text = String::from_utf8_lossy(&body);
            let sample = extract_load(target.flavour, &text, Instant::now());
            warn_if_empty(state, &sample, &target.scrape.path, addr);
            state.set_load(sample);
            return;
        }
        Ok((status, _)) => format!("status {status}"),
        Err(e) => e.to_string(),
    };
    // Log the edge (had a sample, now none), not every failed scrape.
    let msg = format!(
        "replica {}: scrape GET http://{addr}{} failed: {failure}; load unknown",
        state.id(),
        target.scrape.path
    );
    if state.latest_load().is_some() {
        log::warn!("{msg}");
    } else {
        log::debug!("{msg}");
    }
    state.clear_load();
}

fn warn_if_empty(state: &ReplicaState, sample: &LoadSample, path: &str, addr: SocketAddr) {
    let was_empty = state.latest_load().is_some_and(|l| l.sample.is_empty());
    if sample.is_empty() && !was_empty {
        log::warn!(
            "replica {}: scrape of http://{addr}{path} has none of the expected load series \
             (wrong path or flavour?)",
            state.id()
        );
    }
}

#[cfg(test)]
mod tests {
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
}
