//! The shared limiter: every bucket and concurrency counter, keyed by stable names (key name,
//! model alias, the one global set), and admission of a request against all of them.
//!
//! Each scope's state is a `LimitSet`: an atomic in-flight counter and a small mutex around its
//! three buckets (requests/min, tokens/min, tokens/day). Sets live in sharded `DashMap`s and are
//! handed out as `Arc`s, so a request locks only the sets it touches, one at a time, never a
//! global lock. Admission goes key → model → global; a set refusing gives back what the earlier
//! ones took, so a refused request consumes nothing and a burst against `requests_per_minute =
//! 60` admits exactly 60.
//!
//! Limits are passed in with every request rather than registered: a reload or key update just
//! passes different numbers, and the set reshapes its buckets keeping their consumption.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::bucket::{Refusal, TokenBucket};
use super::headers::{format_openai_duration, RateLimitHeaders, WindowState};
use super::lease::{LeaseShared, LeasedBucket};
use super::limits::{Dimension, GlobalLimits, KeyLimits, LimitKind, ModelLimits, Scope, SetLimits};
use super::slot::Slot;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// What a client refused by a concurrency cap is told to wait: nothing predicts when an
/// in-flight request ends, and one second is what SDKs handle well.
pub const CONCURRENCY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Bucket slots of a set, in this order.
const DIMS: [Dimension; 3] = [
    Dimension::RequestsPerMinute,
    Dimension::TokensPerMinute,
    Dimension::TokensPerDay,
];
pub(super) const PERIODS: [Duration; 3] = [MINUTE, MINUTE, DAY];
pub(super) const RPM: usize = 0;
const TPM: usize = 1;

/// One request to admit. Limits are the current ones from the key and the config snapshot.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    pub key_name: &'a str,
    pub key_limits: &'a KeyLimits,
    /// The alias the client asked for (before rewriting to the served name).
    pub model: &'a str,
    pub model_limits: &'a ModelLimits,
    pub global_limits: &'a GlobalLimits,
    /// From `estimate_request_tokens`; reserved now, reconciled by `Reservation::settle`.
    pub estimated_tokens: u64,
}

/// A refusal, ready to be answered as a 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RateLimited {
    /// The limit that refused (the first refusing scope; within it, the longest wait).
    pub limit: LimitKind,
    /// The request alone exceeds a token limit's capacity: waiting cannot help, so
    /// `retry_after` is zero and `headers` carry no `retry-after`.
    pub too_large: bool,
    pub retry_after: Duration,
    /// Names the limit and the numbers, like OpenAI's; never a secret.
    pub message: String,
    /// The key's `x-ratelimit-*` state plus `retry-after` / `retry-after-ms`.
    pub headers: RateLimitHeaders,
}

impl RateLimited {
    /// OpenAI's `error.code` for every rate-limit 429.
    pub const CODE: &'static str = "rate_limit_exceeded";

    /// OpenAI's `error.type`: `requests` or `tokens`.
    pub fn error_type(&self) -> &'static str {
        self.limit.openai_type()
    }
}

#[derive(Debug, Default)]
pub(super) struct Buckets {
    caps: [Option<u64>; 3],
    /// Kept when a limit is removed, so removing and restoring it cannot reset consumption.
    pub(super) slots: [Option<Slot>; 3],
    /// Fleet mode: new slots are leased shares of fleet-wide buckets.
    lease: Option<Arc<LeaseShared>>,
}

impl Buckets {
    fn new_slot(&self, i: usize, cap: u64, now: Instant) -> Slot {
        match &self.lease {
            Some(shared) => Slot::Leased(LeasedBucket::new(shared.clone(), cap, PERIODS[i], now)),
            None => Slot::Local(TokenBucket::new(cap, PERIODS[i], now)),
        }
    }

    fn configure(&mut self, caps: [Option<u64>; 3], now: Instant) {
        if self.caps == caps {
            return;
        }
        for (i, cap) in caps.iter().enumerate() {
            let Some(cap) = *cap else { continue };
            match &mut self.slots[i] {
                Some(b) if b.capacity() == cap => {}
                Some(b) => b.set_capacity(cap, now),
                None => self.slots[i] = Some(self.new_slot(i, cap, now)),
            }
        }
        self.caps = caps;
    }

    pub(super) fn active(&mut self, i: usize) -> Option<&mut Slot> {
        match self.caps[i] {
            Some(_) => self.slots[i].as_mut(),
            None => None,
        }
    }

    /// All or nothing: checks every active bucket, then takes from each.
    fn take(&mut self, amounts: [u64; 3], now: Instant) -> Result<(), Hit> {
        let mut worst: Option<Hit> = None;
        for (i, &amount) in amounts.iter().enumerate() {
            let Some(b) = self.active(i) else { continue };
            if let Err(refusal) = b.check(amount, now) {
                let hit = Hit {
                    dim: DIMS[i],
                    refusal,
                    limit: b.capacity(),
                    used: b.used_for_refusal(amount, now),
                    requested: amount,
                };
                if worst.as_ref().is_none_or(|w| hit.worse_than(w)) {
                    worst = Some(hit);
                }
            }
        }
        if let Some(hit) = worst {
            return Err(hit);
        }
        for (i, &amount) in amounts.iter().enumerate() {
            if let Some(b) = self.active(i) {
                // Cannot fail: checked above at the same `now` under the same lock.
                let _ = b.try_take(amount, now);
            }
        }
        Ok(())
    }

    /// Adds `delta` tokens to the token buckets (refund > 0, charge < 0).
    fn adjust_tokens(&mut self, delta: i64, now: Instant) {
        for i in [TPM, TPM + 1] {
            if let Some(b) = self.active(i) {
                b.adjust(delta, now);
            }
        }
    }

    fn window(&mut self, i: usize, now: Instant) -> Option<WindowState> {
        let b = self.active(i)?;
        Some(WindowState {
            limit: b.capacity(),
            remaining: b.remaining(now),
            reset: b.time_to_full(now),
        })
    }
}

/// The state of one scope (a key, a model alias, or the gateway).
#[derive(Debug, Default)]
pub(super) struct LimitSet {
    buckets: Mutex<Buckets>,
    /// Counted even without a cap, so a cap added by a reload sees the true number.
    in_flight: AtomicU32,
}

impl LimitSet {
    fn with_lease(lease: Option<Arc<LeaseShared>>) -> LimitSet {
        LimitSet {
            buckets: Mutex::new(Buckets {
                lease,
                ..Buckets::default()
            }),
            in_flight: AtomicU32::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Buckets> {
        // A panic while holding this lock cannot leave the buckets half-updated in a way that
        // matters more than refusing all traffic would: keep serving.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire_slot(&self, cap: Option<u32>) -> Result<(), u32> {
        match cap {
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Some(cap) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < cap).then_some(n + 1)
                })
                .map(|_| ()),
        }
    }

    pub(super) fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why one set refused.
#[derive(Debug, Clone, Copy)]
struct Hit {
    dim: Dimension,
    refusal: Refusal,
    limit: u64,
    used: u64,
    requested: u64,
}

impl Hit {
    /// Too large beats a wait (retrying cannot help); a longer wait beats a shorter one (a
    /// retry after the shorter one would be refused by the other bucket).
    fn worse_than(&self, other: &Hit) -> bool {
        match (self.refusal, other.refusal) {
            (Refusal::ExceedsCapacity, Refusal::RetryAfter(_)) => true,
            (Refusal::RetryAfter(a), Refusal::RetryAfter(b)) => a > b,
            _ => false,
        }
    }
}

/// Concurrency slots held and tokens reserved by an admitted request.
///
/// Dropping it releases the concurrency slots (so a request that errors or whose client
/// disconnects never leaks one). Dropped without `settle`, the token reservation stands: the
/// estimate is what gets charged. `settle` consumes it, so it cannot be reconciled twice.
#[must_use = "dropping a Reservation at once releases its concurrency slots"]
#[derive(Debug)]
pub struct Reservation {
    /// Key, model, global: the sets whose slot and tokens this holds.
    held: [Option<Arc<LimitSet>>; 3],
    reserved_tokens: u64,
    headers: RateLimitHeaders,
}

impl Reservation {
    /// The key's `x-ratelimit-*` state right after admission, for the response headers.
    pub fn headers(&self) -> &RateLimitHeaders {
        &self.headers
    }

    pub fn reserved_tokens(&self) -> u64 {
        self.reserved_tokens
    }

    /// Reconciles the reservation with the tokens really used: refunds the difference, or
    /// charges the excess (a bucket may go negative; later requests then wait). Call with 0
    /// for a request that never reached a replica.
    pub fn settle(self, actual_tokens: u64, now: Instant) {
        let delta = i128::from(self.reserved_tokens) - i128::from(actual_tokens);
        let delta = i64::try_from(delta).unwrap_or(if delta > 0 { i64::MAX } else { i64::MIN });
        if delta != 0 {
            for set in self.held.iter().flatten() {
                set.lock().adjust_tokens(delta, now);
            }
        }
        // Drop releases the slots.
    }

    /// Gives back everything taken: the request was refused by a later scope.
    pub fn roll_back(self, now: Instant) {
        let tokens = i64::try_from(self.reserved_tokens).unwrap_or(i64::MAX);
        for set in self.held.iter().flatten() {
            let mut b = set.lock();
            if let Some(rpm) = b.active(RPM) {
                rpm.adjust(1, now);
            }
            b.adjust_tokens(tokens, now);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for set in self.held.iter().flatten() {
            set.release_slot();
        }
    }
}

/// The key's concurrency slot and request, taken by [`Limiter::admit_key`] before the body
/// is read. Dropped unused (the request was refused later), it frees the slot; the request
/// stays counted, as a request was made.
#[must_use = "dropping a KeyTicket at once releases the key's concurrency slot"]
#[derive(Debug)]
pub struct KeyTicket {
    pub(super) set: Option<Arc<LimitSet>>,
}

impl Drop for KeyTicket {
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            set.release_slot();
        }
    }
}

/// All rate-limit state of one process. Share it behind an `Arc`; it outlives config reloads.
#[derive(Debug, Default)]
pub struct Limiter {
    pub(super) keys: DashMap<String, Arc<LimitSet>>,
    pub(super) models: DashMap<String, Arc<LimitSet>>,
    pub(super) global: Arc<LimitSet>,
    /// Fleet mode (`[fleet]`): buckets are leased; see `lease.rs`.
    pub(super) lease: Option<Arc<LeaseShared>>,
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fleet mode: every bucket is a leased share of a fleet-wide one, topped up by the sync
    /// task (`distributed::leases`); concurrency caps are split per instance.
    pub fn leased(shared: Arc<LeaseShared>) -> Self {
        Limiter {
            global: Arc::new(LimitSet::with_lease(Some(shared.clone()))),
            lease: Some(shared),
            ..Limiter::default()
        }
    }

    pub fn lease_shared(&self) -> Option<&Arc<LeaseShared>> {
        self.lease.as_ref()
    }

    fn set_for(&self, map: &DashMap<String, Arc<LimitSet>>, name: &str) -> Arc<LimitSet> {
        // The read path allocates nothing; only the first request for a name inserts.
        if let Some(set) = map.get(name) {
            return set.clone();
        }
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(LimitSet::with_lease(self.lease.clone())))
            .clone()
    }

    /// A concurrency cap as this instance applies it: its share in fleet mode.
    fn slot_cap(&self, cap: Option<u32>) -> Option<u32> {
        match (&self.lease, cap) {
            (Some(shared), Some(c)) => Some(c.div_ceil(shared.instances()).max(1)),
            _ => cap,
        }
    }

    /// Checks every applicable limit and, if all allow it, takes one request and
    /// `estimated_tokens` from each and holds one concurrency slot per scope. The refusal is
    /// boxed: it is the cold path, and keeps the `Result` small on the hot one.
    pub fn admit(
        &self,
        req: &AdmissionRequest<'_>,
        now: Instant,
    ) -> Result<Reservation, Box<RateLimited>> {
        self.admit_inner(req, now, None)
    }

    /// The key's part of admission, from the request headers alone: its concurrency slot and
    /// one request of its `requests_per_minute` (refused too while its token buckets are
    /// overdrawn). Taken before any body byte is buffered, so a key limited to one request
    /// cannot hold many bodies in memory; [`Limiter::admit_after`] completes it.
    pub fn admit_key(
        &self,
        req: &AdmissionRequest<'_>,
        now: Instant,
    ) -> Result<KeyTicket, Box<RateLimited>> {
        let key = self.set_for(&self.keys, req.key_name);
        let limits = SetLimits::from(req.key_limits);
        let slot_cap = self.slot_cap(limits.max_concurrent);
        if let Err(holders) = key.acquire_slot(slot_cap) {
            let cap = slot_cap.unwrap_or(0);
            let headers = key_headers(&key, Some(CONCURRENCY_RETRY_AFTER), now);
            return Err(Box::new(refusal_concurrency(
                Scope::Key,
                req,
                cap,
                holders,
                headers,
            )));
        }
        let taken = {
            let mut b = key.lock();
            b.configure([limits.rpm, limits.tpm, limits.tpd], now);
            b.take([1, 0, 0], now)
        };
        if let Err(hit) = taken {
            key.release_slot();
            return Err(Box::new(refusal_bucket(Scope::Key, req, hit, &key, now)));
        }
        Ok(KeyTicket { set: Some(key) })
    }

    /// [`Limiter::admit`] for a request whose key part `ticket` already took.
    pub fn admit_after(
        &self,
        ticket: KeyTicket,
        req: &AdmissionRequest<'_>,
        now: Instant,
    ) -> Result<Reservation, Box<RateLimited>> {
        self.admit_inner(req, now, Some(ticket))
    }

    fn admit_inner(
        &self,
        req: &AdmissionRequest<'_>,
        now: Instant,
        mut ticket: Option<KeyTicket>,
    ) -> Result<Reservation, Box<RateLimited>> {
        let mut reservation = Reservation {
            held: [None, None, None],
            reserved_tokens: req.estimated_tokens,
            headers: RateLimitHeaders::default(),
        };
        // The ticket's slot and request pass to the reservation.
        let early = ticket.as_mut().and_then(|t| t.set.take());
        let key_done = early.is_some();
        let key = early.unwrap_or_else(|| self.set_for(&self.keys, req.key_name));
        let scopes = [
            (Scope::Key, key.clone(), SetLimits::from(req.key_limits)),
            (
                Scope::Model,
                self.set_for(&self.models, req.model),
                SetLimits::from(req.model_limits),
            ),
            (
                Scope::Global,
                self.global.clone(),
                SetLimits::from(req.global_limits),
            ),
        ];
        for (i, (scope, set, limits)) in scopes.into_iter().enumerate() {
            let already = i == 0 && key_done;
            let requests = u64::from(!already);
            let amounts = [requests, req.estimated_tokens, req.estimated_tokens];
            let slot_cap = self.slot_cap(limits.max_concurrent);
            let slot = if already {
                Ok(())
            } else {
                set.acquire_slot(slot_cap)
            };
            if let Err(slot_holders) = slot {
                let cap = slot_cap.unwrap_or(0);
                reservation.roll_back(now);
                let headers = key_headers(&key, Some(CONCURRENCY_RETRY_AFTER), now);
                return Err(Box::new(refusal_concurrency(
                    scope,
                    req,
                    cap,
                    slot_holders,
                    headers,
                )));
            }
            let taken = {
                let mut b = set.lock();
                b.configure([limits.rpm, limits.tpm, limits.tpd], now);
                let taken = b.take(amounts, now);
                if taken.is_ok() && scope == Scope::Key {
                    reservation.headers.requests = b.window(RPM, now);
                    reservation.headers.tokens = b.window(TPM, now);
                }
                taken
            };
            match taken {
                Ok(()) => reservation.held[i] = Some(set),
                Err(hit) => {
                    set.release_slot();
                    reservation.roll_back(now);
                    return Err(Box::new(refusal_bucket(scope, req, hit, &key, now)));
                }
            }
        }
        Ok(reservation)
    }

    /// Drops the state of a deleted key (in-flight reservations keep theirs alive). A key
    /// recreated under the same name afterwards starts with full buckets.
    pub fn forget_key(&self, name: &str) {
        self.keys.remove(name);
    }

    /// Requests in flight for a key, a model alias, and overall (for admin and metrics).
    pub fn in_flight_key(&self, name: &str) -> u32 {
        self.keys
            .get(name)
            .map_or(0, |s| s.in_flight.load(Ordering::Acquire))
    }

    pub fn in_flight_model(&self, alias: &str) -> u32 {
        self.models
            .get(alias)
            .map_or(0, |s| s.in_flight.load(Ordering::Acquire))
    }

    pub fn in_flight_total(&self) -> u32 {
        self.global.in_flight.load(Ordering::Acquire)
    }
}

fn key_headers(key: &LimitSet, retry_after: Option<Duration>, now: Instant) -> RateLimitHeaders {
    let mut b = key.lock();
    RateLimitHeaders {
        requests: b.window(RPM, now),
        tokens: b.window(TPM, now),
        retry_after,
    }
}

fn subject(scope: Scope, req: &AdmissionRequest<'_>) -> String {
    match scope {
        Scope::Key => match req.key_name.split_once('@') {
            Some(("", class)) => format!("rate-limit class `{class}`"),
            Some((key, class)) => format!("key `{key}` in rate-limit class `{class}`"),
            None => format!("key `{}`", req.key_name),
        },
        Scope::Model => format!("model `{}`", req.model),
        Scope::Global => "this gateway".to_string(),
    }
}

fn refusal_concurrency(
    scope: Scope,
    req: &AdmissionRequest<'_>,
    cap: u32,
    in_flight: u32,
    headers: RateLimitHeaders,
) -> RateLimited {
    RateLimited {
        limit: LimitKind::new(scope, Dimension::Concurrency),
        too_large: false,
        retry_after: CONCURRENCY_RETRY_AFTER,
        message: format!(
            "Concurrency limit reached for {}: {in_flight} of {cap} concurrent requests \
             (max_concurrent) already in flight. Please try again in {}.",
            subject(scope, req),
            format_openai_duration(CONCURRENCY_RETRY_AFTER)
        ),
        headers,
    }
}

fn refusal_bucket(
    scope: Scope,
    req: &AdmissionRequest<'_>,
    hit: Hit,
    key: &LimitSet,
    now: Instant,
) -> RateLimited {
    let limit = LimitKind::new(scope, hit.dim);
    let who = subject(scope, req);
    let what = hit.dim.describe();
    match hit.refusal {
        // Only a token amount can exceed a capacity of at least 1; a requests-per-minute
        // limit of 0 (never valid in the keys file) would land here too and is worded as such.
        Refusal::ExceedsCapacity => RateLimited {
            limit,
            too_large: true,
            retry_after: Duration::ZERO,
            message: format!(
                "Request too large for {who} on {what}: limit {}, requested {}. The input or \
                 output tokens must be reduced (shorten the prompt or lower max_tokens) in \
                 order to run successfully.",
                hit.limit, hit.requested
            ),
            headers: key_headers(key, None, now),
        },
        Refusal::RetryAfter(wait) => RateLimited {
            limit,
            too_large: false,
            retry_after: wait,
            message: format!(
                "Rate limit reached for {who} on {what}: limit {}, used {}, requested {}. \
                 Please try again in {}.",
                hit.limit,
                hit.used,
                hit.requested,
                format_openai_duration(wait)
            ),
            headers: key_headers(key, Some(wait), now),
        },
    }
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
