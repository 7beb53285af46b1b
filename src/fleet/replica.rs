//! Shared runtime state of one replica: in-flight count, latency EWMA, health, scraped load,
//! draining. One `Arc<ReplicaState>` per replica, shared by every request and background task,
//! surviving config reloads (the `Fleet` registry keys it by a stable id).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::hash::fnv1a;
use super::health::{ErrorKind, HealthCore, HealthRules, Outcome, Transition};
use super::prefix::PrefixIndex;

/// Stable identity of a replica across reloads: `"cluster/ip:port"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn new(cluster: &str, addr: SocketAddr) -> ReplicaId {
        ReplicaId(format!("{cluster}/{addr}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Load signals scraped from a replica's metrics endpoint. `None` = the series was absent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// Requests queued in the engine, not yet scheduled.
    pub waiting: Option<f64>,
    /// Requests being decoded.
    pub running: Option<f64>,
    /// KV cache in use, 0..=1.
    pub kv_usage: Option<f64>,
    /// When the scrape completed.
    pub at: Instant,
}

impl LoadSample {
    /// True when the scrape found none of the expected series (wrong path or flavour).
    pub fn is_empty(&self) -> bool {
        self.waiting.is_none() && self.running.is_none() && self.kv_usage.is_none()
    }
}

/// A sample as stored, with the proxy's own in-flight count at the moment it arrived, so
/// selection can add what the proxy itself sent (or saw finish) since.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoredLoad {
    pub sample: LoadSample,
    pub in_flight_at_sample: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastError {
    pub kind: ErrorKind,
    pub at: Instant,
}

/// Weight of the newest latency sample. 0.3 follows a replica that slows down within a
/// handful of requests while one outlier moves the average by less than a third.
const EWMA_ALPHA: f64 = 0.3;
/// `ewma_bits` holds this until the first sample (a NaN pattern no arithmetic produces here).
const NO_EWMA: u64 = u64::MAX;

#[derive(Debug)]
pub struct ReplicaState {
    id: ReplicaId,
    cluster: String,
    addr: SocketAddr,
    /// Hash of the id, the replica's fixed coordinate for rendezvous hashing.
    id_hash: u64,
    in_flight: AtomicUsize,
    /// f64 milliseconds as bits; updated with a compare-and-swap loop.
    ewma_bits: AtomicU64,
    draining: AtomicBool,
    load: ArcSwapOption<StoredLoad>,
    health: Mutex<HealthCore>,
    last_error: Mutex<Option<LastError>>,
    /// Prompt prefixes recently sent here (`scored` policy).
    prefixes: Mutex<PrefixIndex>,
}

/// Poisoning only means another thread panicked mid-update of plain counters; the data is
/// still usable and refusing traffic for it would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReplicaState {
    pub fn new(cluster: &str, addr: SocketAddr, rules: HealthRules) -> ReplicaState {
        let id = ReplicaId::new(cluster, addr);
        let id_hash = fnv1a(id.as_str().as_bytes());
        ReplicaState {
            id,
            cluster: cluster.to_string(),
            addr,
            id_hash,
            in_flight: AtomicUsize::new(0),
            ewma_bits: AtomicU64::new(NO_EWMA),
            draining: AtomicBool::new(false),
            load: ArcSwapOption::const_empty(),
            health: Mutex::new(HealthCore::new(rules)),
            last_error: Mutex::new(None),
            prefixes: Mutex::new(PrefixIndex::default()),
        }
    }

    pub fn id(&self) -> &ReplicaId {
        &self.id
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn id_hash(&self) -> u64 {
        self.id_hash
    }

    /// Replace the thresholds (config reload); history is kept.
    pub fn set_rules(&self, rules: HealthRules) {
        let mut h = lock(&self.health);
        if *h.rules() != rules {
            h.set_rules(rules);
        }
    }

    // ---- in flight -------------------------------------------------------------------

    /// Count a request as sent to this replica until the guard is dropped. Take it when the
    /// replica is chosen (so concurrent selections see it at once) and keep it in the request
    /// context until the response ends or the attempt is abandoned.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            replica: Arc::clone(self),
        }
    }

    /// How many leading `blocks` (see `prefix::block_hashes`) were recently sent here.
    pub fn prefix_matched(&self, blocks: &[u64]) -> usize {
        if blocks.is_empty() {
            return 0;
        }
        lock(&self.prefixes).matched(blocks)
    }

    /// Remembers that a request with these prompt blocks was sent here.
    pub fn remember_prefix(&self, blocks: &[u64]) {
        if !blocks.is_empty() {
            lock(&self.prefixes).insert(blocks);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    // ---- latency -----------------------------------------------------------------------

    /// Feed one latency observation (time to the response header / first token).
    pub fn record_latency(&self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        if !ms.is_finite() {
            return;
        }
        // A lost race only means retrying with the newer value; no lock on the request path.
        let _ = self
            .ewma_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == NO_EWMA {
                    ms
                } else {
                    let old = f64::from_bits(bits);
                    old + EWMA_ALPHA * (ms - old)
                };
                Some(next.to_bits())
            });
    }

    /// Smoothed latency in milliseconds; `None` before the first observation.
    pub fn ewma_ms(&self) -> Option<f64> {
        let bits = self.ewma_bits.load(Ordering::Relaxed);
        (bits != NO_EWMA).then(|| f64::from_bits(bits))
    }

    // ---- draining ----------------------------------------------------------------------

    /// Stop (or resume) sending new requests; in-flight ones finish. Returns the old value.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    // ---- health ------------------------------------------------------------------------

    /// Feed one active probe result (`success` = status 200 within the timeout).
    pub fn on_probe(&self, success: bool, now: Instant) -> Option<Transition> {
        if !success {
            self.set_last_error(ErrorKind::ProbeFailed, now);
        }
        lock(&self.health).on_probe(success, now)
    }

    /// Feed the outcome of one proxied request (or attempt).
    pub fn on_request_outcome(&self, outcome: Outcome, now: Instant) -> Option<Transition> {
        let (kind, transition) = lock(&self.health).on_request_outcome(outcome, now);
        if let Some(kind) = kind {
            self.set_last_error(kind, now);
        }
        transition
    }

    /// May new requests go here: healthy by probes, not passively ejected, not draining.
    pub fn is_eligible(&self, now: Instant) -> bool {
        !self.is_draining() && lock(&self.health).is_available(now)
    }

    /// A copy of the health state machine, for views and tests.
    pub fn health(&self) -> HealthCore {
        lock(&self.health).clone()
    }

    fn set_last_error(&self, kind: ErrorKind, at: Instant) {
        *lock(&self.last_error) = Some(LastError { kind, at });
    }

    pub fn last_error(&self) -> Option<LastError> {
        *lock(&self.last_error)
    }

    // ---- scraped load ------------------------------------------------------------------

    pub fn set_load(&self, sample: LoadSample) {
        self.load.store(Some(Arc::new(StoredLoad {
            sample,
            in_flight_at_sample: self.in_flight(),
        })));
    }

    /// Forget the sample (e.g. the scrape failed and the old one must not linger).
    pub fn clear_load(&self) {
        self.load.store(None);
    }

    /// The latest sample if it is younger than `stale_after`; older ones are unknown.
    pub fn fresh_load(&self, now: Instant, stale_after: Duration) -> Option<StoredLoad> {
        let stored = self.load.load_full()?;
        (now.saturating_duration_since(stored.sample.at) <= stale_after).then_some(*stored)
    }

    /// The latest sample whatever its age (admin view).
    pub fn latest_load(&self) -> Option<StoredLoad> {
        self.load.load_full().map(|s| *s)
    }
}

/// One request counted in a replica's in-flight total; dropping it (response finished,
/// attempt failed, request context dropped) uncounts it, so no path can leak a count.
#[derive(Debug)]
pub struct InFlight {
    replica: Arc<ReplicaState>,
}

impl InFlight {
    pub fn replica(&self) -> &Arc<ReplicaState> {
        &self.replica
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Arc<ReplicaState> {
        Arc::new(ReplicaState::new(
            "c",
            SocketAddr::from(([10, 0, 0, 1], 8000)),
            HealthRules::default(),
        ))
    }

    #[test]
    fn id_is_cluster_and_addr() {
        assert_eq!(replica().id().as_str(), "c/10.0.0.1:8000");
    }

    #[test]
    fn in_flight_guard_counts_and_uncounts() {
        let r = replica();
        let a = r.begin();
        let b = r.begin();
        assert_eq!(r.in_flight(), 2);
        drop(a);
        assert_eq!(r.in_flight(), 1);
        drop(b);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn ewma_follows_samples() {
        let r = replica();
        assert_eq!(r.ewma_ms(), None);
        r.record_latency(Duration::from_millis(100));
        assert_eq!(r.ewma_ms(), Some(100.0));
        r.record_latency(Duration::from_millis(200));
        let v = r.ewma_ms().unwrap_or(0.0);
        assert!((v - 130.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn eligibility_combines_health_and_draining() {
        let r = replica();
        let t = Instant::now();
        assert!(!r.is_eligible(t), "starting");
        r.on_probe(true, t);
        assert!(r.is_eligible(t));
        assert!(!r.set_draining(true));
        assert!(!r.is_eligible(t));
        r.set_draining(false);
        assert!(r.is_eligible(t));
        r.on_probe(false, t);
        assert!(!r.is_eligible(t));
        assert_eq!(r.last_error().map(|e| e.kind), Some(ErrorKind::ProbeFailed));
    }

    #[test]
    fn stale_samples_are_unknown() {
        let r = replica();
        let t = Instant::now();
        let _g = r.begin();
        r.set_load(LoadSample {
            waiting: Some(2.0),
            running: None,
            kv_usage: None,
            at: t,
        });
        let s = Duration::from_secs(6);
        let fresh = r.fresh_load(t + Duration::from_secs(5), s);
        assert_eq!(fresh.map(|l| l.in_flight_at_sample), Some(1));
        assert!(r.fresh_load(t + Duration::from_secs(7), s).is_none());
        assert!(r.latest_load().is_some());
        r.clear_load();
        assert!(r.latest_load().is_none());
    }
}
