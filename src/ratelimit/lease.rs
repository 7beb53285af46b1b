//! Leased token buckets: this instance's side of a fleet-wide bucket held in a shared store.
//!
//! The fleet-wide bucket (capacity `C`, refill `r = C / period`) lives in the store and is
//! only ever changed by one atomic operation, [`StoreBucket::exchange`] (the Redis script
//! implements exactly the same arithmetic). An instance takes a *lease* — a batch of the
//! bucket's tokens — and spends it locally with no I/O; a background task tops it up before it
//! runs dry ([`LeasedBucket::plan`] → store → [`LeasedBucket::apply`]), returns it when the key
//! goes idle, and charges metered excess (negative balance) back as debt.
//!
//! Overshoot: tokens are spent only from grants the store deducted, plus one *cold credit* per
//! instance (a bucket with no lease may admit up to one lease on credit, charged at the next
//! sync, so the first request on an instance never waits for the store). Over any window of
//! length `t`, admitted ≤ `C + r·t + E + N·(L + B)`: `N` instances, `L` the largest lease,
//! `B` the cold credit (= `L`), `E` the metered excess over reservations still unsettled.
//!
//! While the store is unreachable a bucket spends what it leased, then falls back to a local
//! bucket of `C / N̂` (N̂ = last known instance count), or admits everything (fail-open) or
//! nothing (fail-closed). What it spent in fallback is charged as debt once the store is back.
//!
//! Plain Rust: no I/O, no async, time passed in.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bucket::{Refusal, TokenBucket};

/// What a bucket does once its lease is spent and the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DownMode {
    /// A local bucket of `capacity / instances` (the default).
    #[default]
    LocalShare,
    /// Admit everything.
    FailOpen,
    /// Admit nothing beyond the lease.
    FailClosed,
}

/// Lease sizing, fixed per process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseParams {
    /// How often the sync task runs; a lease lasts about four of these at the current rate.
    pub sync_interval: Duration,
    /// Largest lease as a fraction of this instance's share (`capacity / instances`).
    pub max_fraction: f64,
    /// A bucket unused this long gives its lease back.
    pub idle_return: Duration,
    pub down_mode: DownMode,
}

impl Default for LeaseParams {
    fn default() -> Self {
        LeaseParams {
            sync_interval: Duration::from_millis(100),
            max_fraction: 0.05,
            idle_return: Duration::from_secs(2),
            down_mode: DownMode::LocalShare,
        }
    }
}

/// State every leased bucket of a process reads: written by the sync and heartbeat tasks,
/// read (two relaxed loads) by the hot path.
#[derive(Debug)]
pub struct LeaseShared {
    pub params: LeaseParams,
    store_down: AtomicBool,
    instances: AtomicU32,
}

impl LeaseShared {
    pub fn new(params: LeaseParams) -> Arc<LeaseShared> {
        Arc::new(LeaseShared {
            params,
            store_down: AtomicBool::new(false),
            instances: AtomicU32::new(1),
        })
    }

    pub fn set_store_down(&self, down: bool) {
        self.store_down.store(down, Ordering::Relaxed);
    }

    pub fn store_down(&self) -> bool {
        self.store_down.load(Ordering::Relaxed)
    }

    /// The last known number of live instances (at least 1).
    pub fn set_instances(&self, n: u32) {
        self.instances.store(n.max(1), Ordering::Relaxed);
    }

    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    /// This instance's share of a limit, rounded up (a limit of 1 stays usable).
    pub fn share(&self, limit: u64) -> u64 {
        limit.div_ceil(u64::from(self.instances()))
    }
}

/// One exchange with the store for one bucket: first add `give` (positive: unused lease
/// returned; negative: debt charged), then take up to `want`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncOp {
    pub give: i64,
    pub want: u64,
}

impl SyncOp {
    pub fn is_empty(&self) -> bool {
        self.give == 0 && self.want == 0
    }
}

/// The store's answer to a [`SyncOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    pub granted: u64,
    /// Whole tokens left in the fleet bucket after the exchange (0 while in debt).
    pub remaining: u64,
    /// Until one more token is available in the fleet bucket.
    pub wait: Duration,
}

#[derive(Debug, Clone)]
pub struct LeasedBucket {
    shared: Arc<LeaseShared>,
    capacity: u64,
    period: Duration,
    /// Leased and unspent; negative = metered excess or credit to charge at the next sync.
    balance: i64,
    /// The fleet bucket as last seen (for headers, messages and the fallback's level).
    remote: Grant,
    synced_once: bool,
    /// Spent since the last plan, and the smoothed spend rate (tokens per second).
    spent: u64,
    rate: f64,
    last_plan: Instant,
    /// The largest amount refused for lack of lease since the last plan.
    short: u64,
    /// Last demand (admitted or refused).
    last_used: Instant,
    /// May admit up to one lease on credit until the next exchange (fresh bucket, or idle
    /// since its lease was returned).
    cold: bool,
    /// While the store is down (local-share): the local bucket, and what it admitted.
    fallback: Option<TokenBucket>,
    fallback_spent: u64,
    /// Since the store was seen down and until the next successful exchange: spend the
    /// lease, then the fallback (a store back up has granted nothing yet).
    degraded: bool,
}

impl LeasedBucket {
    pub fn new(shared: Arc<LeaseShared>, capacity: u64, period: Duration, now: Instant) -> Self {
        LeasedBucket {
            shared,
            capacity,
            period,
            balance: 0,
            remote: Grant {
                granted: 0,
                remaining: capacity,
                wait: Duration::ZERO,
            },
            synced_once: false,
            spent: 0,
            rate: 0.0,
            last_plan: now,
            short: 0,
            last_used: now,
            cold: true,
            fallback: None,
            fallback_spent: 0,
            degraded: false,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn balance(&self) -> i64 {
        self.balance
    }

    /// The largest lease this bucket takes at once (`L` in the overshoot bound).
    pub fn max_lease(&self) -> u64 {
        let share = self.shared.share(self.capacity) as f64;
        let l = (share * self.shared.params.max_fraction).ceil() as u64;
        l.clamp(1, self.capacity.max(1))
    }

    /// Switches to the local fallback when the store is down; back only with the next
    /// successful exchange (`apply`).
    fn follow_store(&mut self, now: Instant) {
        let down = self.shared.store_down();
        self.degraded |= down;
        match (&mut self.fallback, down) {
            (None, true) if self.shared.params.down_mode == DownMode::LocalShare => {
                let share = self.shared.share(self.capacity);
                let mut b = TokenBucket::new(share, self.period, now);
                // Start from this instance's part of what the fleet had left, so an outage
                // does not hand every instance a fresh burst.
                let left = self
                    .remote
                    .remaining
                    .div_ceil(u64::from(self.shared.instances()));
                if self.synced_once && left < share {
                    let _ = b.try_take(share - left, now);
                }
                self.fallback = Some(b);
            }
            _ => {}
        }
    }

    /// Whether `amount` could be taken now, without taking it. Records the demand either
    /// way: a key refused while the fleet bucket is empty must not count as idle, and the
    /// next lease must fit the refused amount.
    pub fn check(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        if amount > self.capacity {
            return Err(Refusal::ExceedsCapacity);
        }
        self.last_used = now;
        self.follow_store(now);
        let amount_i = i64::try_from(amount).unwrap_or(i64::MAX);
        if self.balance >= amount_i {
            return Ok(());
        }
        if self.degraded {
            return match (self.shared.params.down_mode, self.fallback.as_mut()) {
                (DownMode::FailOpen, _) => Ok(()),
                (DownMode::LocalShare, Some(b)) => b.check(amount, now),
                _ => Err(Refusal::RetryAfter(Duration::from_secs(1))),
            };
        }
        // One request on credit even when it is larger than a lease, if the fleet bucket
        // had room for it when last seen.
        let credit = i64::try_from(self.max_lease().max(amount)).unwrap_or(i64::MAX);
        if self.cold
            && amount <= self.remote.remaining
            && self.balance.saturating_sub(amount_i) >= -credit
        {
            return Ok(());
        }
        // The sync task tops the lease up within one interval; the store's own wait when the
        // fleet bucket itself is empty.
        let wait = self.remote.wait.max(self.shared.params.sync_interval);
        self.short = self.short.max(amount);
        Err(Refusal::RetryAfter(wait))
    }

    /// Takes `amount` if `check` allows it; otherwise changes nothing.
    pub fn try_take(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        self.check(amount, now)?;
        let amount_i = i64::try_from(amount).unwrap_or(i64::MAX);
        self.spent = self.spent.saturating_add(amount);
        if self.balance >= amount_i || !self.degraded {
            // Below zero: the cold credit, charged at the next exchange.
            self.balance -= amount_i;
        } else if let Some(b) = self.fallback.as_mut() {
            let _ = b.try_take(amount, now);
            self.fallback_spent = self.fallback_spent.saturating_add(amount);
        }
        Ok(())
    }

    /// Positive refunds, negative charges; both settle with the store through the balance.
    pub fn adjust(&mut self, delta: i64, _now: Instant) {
        self.balance = self.balance.saturating_add(delta);
    }

    /// Tokens this instance sees as available: its lease plus the fleet bucket's last known
    /// level (what `x-ratelimit-remaining-*` reports).
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.follow_store(now);
        let local = u64::try_from(self.balance.max(0)).unwrap_or(0);
        let fallback = self.fallback.as_mut().map_or(0, |b| b.remaining(now));
        local
            .saturating_add(self.remote.remaining)
            .saturating_add(fallback)
            .min(self.capacity)
    }

    /// How long until `amount` could be taken; `None` if it exceeds the capacity.
    pub fn time_until(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        match self.check(amount, now) {
            Ok(()) => Some(Duration::ZERO),
            Err(Refusal::ExceedsCapacity) => None,
            Err(Refusal::RetryAfter(w)) => Some(w),
        }
    }

    /// How long until the fleet bucket is full again, at the refill rate.
    pub fn time_to_full(&mut self, now: Instant) -> Duration {
        let missing = self.capacity - self.remaining(now);
        if self.capacity == 0 {
            return Duration::ZERO;
        }
        let ns = self.period.as_nanos() * u128::from(missing) / u128::from(self.capacity);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Tokens counted as used, for a 429 refusing `requested`: never less than what makes
    /// `used + requested > limit`, so the message adds up.
    pub fn used_for_refusal(&mut self, requested: u64, now: Instant) -> u64 {
        let used = self.capacity - self.remaining(now);
        used.max((self.capacity + 1).saturating_sub(requested))
    }

    /// Keeps what was consumed; the store learns the new capacity with the next exchange.
    pub fn set_capacity(&mut self, capacity: u64, now: Instant) {
        self.capacity = capacity;
        self.remote.remaining = self.remote.remaining.min(capacity);
        if let Some(b) = self.fallback.as_mut() {
            b.set_capacity(self.shared.share(capacity), now);
        }
    }

    /// What to exchange with the store now (an empty op: nothing). Whatever is given back
    /// leaves the balance at once, so it cannot also be spent; `apply` (or `abandon` on
    /// failure) completes the exchange.
    pub fn plan(&mut self, now: Instant) -> SyncOp {
        let dt = now.saturating_duration_since(self.last_plan).as_secs_f64();
        if dt > 0.0 {
            let inst = self.spent as f64 / dt;
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                0.5 * self.rate + 0.5 * inst
            };
        }
        self.spent = 0;
        self.last_plan = now;
        let short = std::mem::take(&mut self.short);
        // Consumption during an outage is charged as debt, at most one capacity (the outage
        // already held every instance to its share).
        let outage = self.fallback_spent.min(self.capacity);
        let mut op = SyncOp {
            give: -i64::try_from(outage).unwrap_or(i64::MAX),
            want: 0,
        };
        self.fallback_spent = 0;
        if self.balance < 0 {
            op.give += self.balance; // debt and used credit
            self.balance = 0;
        }
        let idle = now.saturating_duration_since(self.last_used) >= self.shared.params.idle_return;
        if idle {
            op.give += self.balance;
            self.balance = 0;
            self.cold = true;
            self.rate = 0.0;
            return op;
        }
        let target = self.target(short);
        let balance = u64::try_from(self.balance).unwrap_or(0);
        if balance < target {
            op.want = target - balance;
        }
        op
    }

    /// The lease to hold: four sync intervals at the recent rate (the next top-up, plus the
    /// time to notice a stalled store before the lease runs dry), at least the largest amount
    /// refused meanwhile (one request must fit), at most the largest lease.
    fn target(&self, short: u64) -> u64 {
        let by_rate = (4.0 * self.rate * self.shared.params.sync_interval.as_secs_f64()).ceil();
        let by_rate = by_rate.min(self.capacity as f64) as u64;
        let floor = short.max(1);
        let ceiling = self.max_lease().max(short);
        by_rate.clamp(floor, ceiling).min(self.capacity)
    }

    /// The store's answer: the grant joins the lease.
    pub fn apply(&mut self, grant: Grant) {
        self.balance = self
            .balance
            .saturating_add(i64::try_from(grant.granted).unwrap_or(i64::MAX));
        self.remote = grant;
        self.synced_once = true;
        self.degraded = false;
        self.fallback = None;
        // Warm from the first exchange on: the credit comes back only after an idle return.
        self.cold = false;
    }

    /// The exchange failed: take back what was given so nothing is lost or double-charged.
    /// Returned tokens come back; debt stays owed (a negative balance) for the next one.
    pub fn abandon(&mut self, op: SyncOp) {
        self.balance = self.balance.saturating_add(op.give);
    }
}

/// The store's bucket, in the same arithmetic as the Redis script (milliseconds, floating
/// tokens): refill, add `give` (never above C; debt is unbounded below, as on a single
/// node), grant up to `want` whole tokens. Used by the
/// property tests to check the protocol; the script is the production copy.
#[derive(Debug, Clone)]
pub struct StoreBucket {
    pub capacity: u64,
    pub period_ms: u64,
    pub tokens: f64,
    pub ts_ms: u64,
}

impl StoreBucket {
    pub fn new(capacity: u64, period_ms: u64, now_ms: u64) -> Self {
        StoreBucket {
            capacity,
            period_ms: period_ms.max(1),
            tokens: capacity as f64,
            ts_ms: now_ms,
        }
    }

    pub fn exchange(&mut self, op: SyncOp, now_ms: u64) -> Grant {
        let cap = self.capacity as f64;
        if now_ms > self.ts_ms {
            let added = (now_ms - self.ts_ms) as f64 * cap / self.period_ms as f64;
            self.tokens = (self.tokens + added).min(cap);
            self.ts_ms = now_ms;
        }
        self.tokens = (self.tokens + op.give as f64).min(cap);
        let mut granted = 0;
        if op.want > 0 && self.tokens >= 1.0 {
            granted = op.want.min(self.tokens.floor() as u64);
        }
        self.tokens -= granted as f64;
        let wait_ms = if self.tokens < 1.0 && self.capacity > 0 {
            ((1.0 - self.tokens) * self.period_ms as f64 / cap).ceil() as u64
        } else {
            0
        };
        Grant {
            granted,
            remaining: self.tokens.max(0.0).floor() as u64,
            wait: Duration::from_millis(wait_ms),
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
