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
    /// Decode time per stream (first token to last), f64 milliseconds as bits, like `ewma_bits`.
    decode_bits: AtomicU64,
    /// Our requests here still waiting for their first token (queued or in prefill).
    awaiting: AtomicUsize,
    /// Seconds to the first token per request that was awaiting it ahead (plus one), f64 bits
    /// like `ewma_bits`: how fast the replica gets through its line of new requests.
    first_token_bits: AtomicU64,
    /// Batch slots the replica appears to have (0 = not seen yet), see [`ReplicaState::slots`].
    slots: AtomicU64,
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
            decode_bits: AtomicU64::new(NO_EWMA),
            slots: AtomicU64::new(0),
            awaiting: AtomicUsize::new(0),
            first_token_bits: AtomicU64::new(NO_EWMA),
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
        let ahead = self.awaiting.fetch_add(1, Ordering::Relaxed);
        InFlight {
            replica: Arc::clone(self),
            sent: Instant::now(),
            ahead,
            awaiting: true,
        }
    }

    /// Our requests here that have not had their first token yet.
    pub fn awaiting_first_token(&self) -> usize {
        self.awaiting.load(Ordering::Relaxed)
    }

    /// Smoothed seconds to the first token per request in line (see [`InFlight::first_token`]);
    /// `None` before the first answer.
    pub fn first_token_per_request_s(&self) -> Option<f64> {
        ewma_read(&self.first_token_bits).map(|ms| ms / 1000.0)
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
        ewma_update(&self.ewma_bits, latency);
    }

    /// Smoothed latency in milliseconds; `None` before the first observation.
    pub fn ewma_ms(&self) -> Option<f64> {
        ewma_read(&self.ewma_bits)
    }

    /// Feed one stream's decode time: from its first token to its last, as the proxy saw it.
    /// That is how long the request held one of the replica's batch slots after its prefill,
    /// so slots free up at about `running / decode time` (the queue's drain rate).
    pub fn record_decode(&self, decode: Duration) {
        ewma_update(&self.decode_bits, decode);
    }

    /// Smoothed decode time per stream in milliseconds; `None` before the first stream.
    pub fn decode_ms(&self) -> Option<f64> {
        ewma_read(&self.decode_bits)
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
        if let Some(running) = sample.running.filter(|r| r.is_finite() && *r >= 1.0) {
            let running = running.round() as u64;
            if sample.waiting.is_some_and(|w| w > 0.0) {
                // Queueing: every slot it can fill now is running.
                self.slots.store(running, Ordering::Relaxed);
            } else {
                // More running without a queue than when it last queued (e.g. it queued on a
                // full KV cache): at least that many. Unknown stays unknown until a queue.
                let _ = self
                    .slots
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n > 0 && running > n).then_some(running)
                    });
            }
        }
        self.load.store(Some(Arc::new(StoredLoad {
            sample,
            in_flight_at_sample: self.in_flight(),
        })));
    }

    /// How many requests the replica runs at once (vLLM's `max_num_seqs`, or fewer when
    /// its KV cache is the limit), as the scrapes show it: the running count of the latest
    /// sample that had a queue, raised by any later sample running more. `None` until a
    /// sample shows a queue (below that, how many more would fit is unknown).
    pub fn slots(&self) -> Option<f64> {
        let n = self.slots.load(Ordering::Relaxed);
        (n > 0).then_some(n as f64)
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

/// Moves the EWMA in `bits` towards `sample`. A lost race only means retrying with the newer
/// value; no lock on the request path.
fn ewma_update(bits: &AtomicU64, sample: Duration) {
    let ms = sample.as_secs_f64() * 1000.0;
    if !ms.is_finite() {
        return;
    }
    let _ = bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let next = if old == NO_EWMA {
            ms
        } else {
            let old = f64::from_bits(old);
            old + EWMA_ALPHA * (ms - old)
        };
        Some(next.to_bits())
    });
}

fn ewma_read(bits: &AtomicU64) -> Option<f64> {
    let bits = bits.load(Ordering::Relaxed);
    (bits != NO_EWMA).then(|| f64::from_bits(bits))
}

/// One request counted in a replica's in-flight total; dropping it (response finished,
/// attempt failed, request context dropped) uncounts it, so no path can leak a count.
#[derive(Debug)]
pub struct InFlight {
    replica: Arc<ReplicaState>,
    sent: Instant,
    /// Our requests on the replica still awaiting their first token when this one was sent.
    ahead: usize,
    awaiting: bool,
}

impl InFlight {
    pub fn replica(&self) -> &Arc<ReplicaState> {
        &self.replica
    }

    /// The first token arrived (after the replica's queue and the prefill; for a JSON answer:
    /// the answer's end). Feeds the replica's time per request in line, `elapsed / (ahead +
    /// 1)`, once per request.
    pub fn first_token(&mut self, now: Instant) {
        if !std::mem::take(&mut self.awaiting) {
            return;
        }
        self.replica.awaiting.fetch_sub(1, Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(self.sent);
        let per = elapsed.div_f64(self.ahead as f64 + 1.0);
        ewma_update(&self.replica.first_token_bits, per);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.awaiting {
            self.replica.awaiting.fetch_sub(1, Ordering::Relaxed);
        }
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
    fn first_tokens_measure_the_time_per_request_in_line() {
        let r = replica();
        let mut a = r.begin();
        let mut b = r.begin();
        let c = r.begin();
        assert_eq!(r.awaiting_first_token(), 3);
        a.first_token(a.sent + Duration::from_millis(100));
        a.first_token(a.sent + Duration::from_secs(9));
        assert_eq!(r.awaiting_first_token(), 2, "counted once");
        assert_eq!(r.first_token_per_request_s(), Some(0.1));
        // One was ahead of `b`: 300 ms for two requests.
        b.first_token(b.sent + Duration::from_millis(300));
        let per = r.first_token_per_request_s().unwrap_or(0.0);
        assert!((per - (0.1 + 0.3 * (0.15 - 0.1))).abs() < 1e-9, "{per}");
        drop(c);
        assert_eq!(
            r.awaiting_first_token(),
            0,
            "an attempt abandoned early uncounts"
        );
        drop((a, b));
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
        assert_eq!(r.decode_ms(), None, "a separate average");
        r.record_decode(Duration::from_secs(2));
        assert_eq!(r.decode_ms(), Some(2000.0));
        assert_eq!(r.ewma_ms(), Some(v));
    }

    #[test]
    fn slots_follow_the_running_count_of_queueing_samples() {
        let r = replica();
        let t = Instant::now();
        let sample = |waiting: f64, running: f64| LoadSample {
            waiting: Some(waiting),
            running: Some(running),
            kv_usage: None,
            at: t,
        };
        r.set_load(sample(0.0, 3.0));
        assert_eq!(r.slots(), None, "no queue seen: room unknown");
        r.set_load(sample(4.0, 8.0));
        assert_eq!(r.slots(), Some(8.0));
        r.set_load(sample(0.0, 2.0));
        assert_eq!(r.slots(), Some(8.0));
        r.set_load(sample(1.0, 6.0));
        assert_eq!(
            r.slots(),
            Some(6.0),
            "queueing at 6: the KV cache limits it"
        );
        r.set_load(sample(0.0, 7.0));
        assert_eq!(r.slots(), Some(7.0), "ran 7 without a queue since");
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
        assert_eq!(r.slots(), None, "no running count yet");
        assert!(r.latest_load().is_some());
        r.clear_load();
        assert!(r.latest_load().is_none());
    }
}
