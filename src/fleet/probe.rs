//! The active side of replica health: background tasks that probe each replica's health path
//! and scrape its metrics, feeding [`ReplicaState`]. Plain tokio, no Pingora types.
//!
//! - [`http_get`]: a minimal HTTP/1.1 GET (one connection per call, `Connection: close`, one
//!   overall deadline, capped body) on hyper's low-level client.
//! - [`Prober`]: holds the current [`ProbeTarget`]s (replaced on every config reload) and
//!   runs the schedule: every target's health probe and scrape on their own intervals, each in
//!   its own task, so one slow replica never delays another; at most one probe and one scrape
//!   in flight per replica.

mod http;

pub use http::{http_get, ProbeError};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::Flavour;
use crate::fleet::health::Transition;
use crate::fleet::replica::{LoadSample, ReplicaId, ReplicaState};
use crate::fleet::scrape::{extract_load, MAX_SCRAPE_BYTES};
use crate::fleet::settings::{probe_status_is_healthy, HealthSettings, ScrapeSettings};

/// Health probes answer with a few bytes; anything bigger is not a health endpoint.
pub const MAX_PROBE_BODY_BYTES: usize = 64 << 10;
/// How often the scheduler looks for due probes by default.
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);

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
mod tests;
