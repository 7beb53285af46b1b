//! A continuous-refill token bucket.
//!
//! Capacity `C` tokens, refilled at `C` per `period` continuously (not in fixed windows, so
//! there is no burst of `2C` at a window edge). The level may go negative: usage charged after
//! the fact (a completion longer than its reservation) makes later requests wait.
//!
//! Arithmetic is exact integers: the level is kept in units of `1 / period_ns` tokens, so one
//! nanosecond of refill adds exactly `C` units and no rounding drifts over millions of
//! operations. `i128` holds `C · period_ns` for any `u64` capacity and a period of a day.
//!
//! Time is passed in. A `now` earlier than the last one seen (threads read the clock before
//! taking the lock) refills nothing and never moves the bucket's clock backwards.

use std::time::{Duration, Instant};

/// Why a bucket refused an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough tokens now; this much later there will be.
    RetryAfter(Duration),
    /// The amount exceeds the capacity: it can never be admitted, however long one waits.
    ExceedsCapacity,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u64,
    period_ns: i128,
    /// Tokens × `period_ns`. At most `capacity × period_ns`; may be negative.
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `period` must be non-zero (a zero period is treated as one nanosecond).
    pub fn new(capacity: u64, period: Duration, now: Instant) -> Self {
        let period_ns = (period.as_nanos() as i128).max(1);
        TokenBucket {
            capacity,
            period_ns,
            level: capacity as i128 * period_ns,
            last: now,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn period(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.period_ns).unwrap_or(u64::MAX))
    }

    fn full(&self) -> i128 {
        self.capacity as i128 * self.period_ns
    }

    fn scaled(&self, tokens: u64) -> i128 {
        tokens as i128 * self.period_ns
    }

    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        let added = (elapsed.as_nanos() as i128).saturating_mul(self.capacity as i128);
        self.level = self.level.saturating_add(added).min(self.full());
    }

    /// Nanoseconds of refill needed to cover `deficit` units, rounded up.
    fn wait_for(&self, deficit: i128) -> Duration {
        if deficit <= 0 {
            return Duration::ZERO;
        }
        if self.capacity == 0 {
            return Duration::MAX;
        }
        let cap = self.capacity as i128;
        let ns = (deficit + cap - 1) / cap;
        u64::try_from(ns).map_or(Duration::MAX, Duration::from_nanos)
    }

    /// Whether `amount` could be taken now, without taking it.
    pub fn check(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        self.refill(now);
        if amount > self.capacity {
            return Err(Refusal::ExceedsCapacity);
        }
        let need = self.scaled(amount);
        if self.level >= need {
            Ok(())
        } else {
            Err(Refusal::RetryAfter(self.wait_for(need - self.level)))
        }
    }

    /// Takes `amount` if the level covers it; otherwise changes nothing.
    pub fn try_take(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        self.check(amount, now)?;
        self.level -= self.scaled(amount);
        Ok(())
    }

    /// Positive `delta` refunds (never above capacity), negative charges (may go negative).
    pub fn adjust(&mut self, delta: i64, now: Instant) {
        self.refill(now);
        let units = (delta as i128).saturating_mul(self.period_ns);
        self.level = self.level.saturating_add(units).min(self.full());
    }

    /// Whole tokens available now (0 while in debt).
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        u64::try_from(self.level.max(0) / self.period_ns).unwrap_or(u64::MAX)
    }

    /// How long until `amount` could be taken; `None` if it exceeds the capacity.
    pub fn time_until(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        if amount > self.capacity {
            return None;
        }
        Some(self.wait_for(self.scaled(amount) - self.level))
    }

    /// How long until the bucket is full again (`x-ratelimit-reset-*`).
    pub fn time_to_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.wait_for(self.full() - self.level)
    }

    /// Tokens consumed and not yet refilled (above `capacity` while in debt), rounded up: a
    /// refused amount always satisfies `used + amount > capacity`, so a 429 message adds up.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.refill(now);
        let missing = self.full() - self.level;
        let used = (missing + self.period_ns - 1).div_euclid(self.period_ns);
        u64::try_from(used.max(0)).unwrap_or(u64::MAX)
    }

    /// Changes the capacity without forgetting what was consumed. Raising it keeps the
    /// consumption (a full bucket stays full, a half-used one gains the difference); lowering
    /// it clamps the level to the new capacity (a change never creates a debt on its own).
    /// Either way a reload cannot hand out a fresh burst.
    pub fn set_capacity(&mut self, capacity: u64, now: Instant) {
        self.refill(now);
        if capacity > self.capacity {
            self.level = self
                .level
                .saturating_add(self.scaled(capacity - self.capacity));
        }
        self.capacity = capacity;
        self.level = self.level.min(self.full());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn starts_full_and_refuses_when_empty() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, MIN, t0);
        for _ in 0..60 {
            assert!(b.try_take(1, t0).is_ok());
        }
        assert_eq!(
            b.try_take(1, t0),
            Err(Refusal::RetryAfter(Duration::from_secs(1)))
        );
        assert_eq!(b.remaining(t0), 0);
        // One second refills exactly one request at 60 per minute.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.try_take(1, t1).is_ok());
        assert!(b.try_take(1, t1).is_err());
    }

    #[test]
    fn amount_over_capacity_is_never_admitted() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, MIN, t0);
        assert_eq!(b.try_take(12_000, t0), Err(Refusal::ExceedsCapacity));
        assert_eq!(b.time_until(12_000, t0), None);
        assert_eq!(b.remaining(t0), 10_000, "a refusal takes nothing");
    }

    #[test]
    fn retry_after_is_exact_and_rounded_up() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, MIN, t0);
        b.try_take(9_000, t0).unwrap();
        // Needs 1 000 more of 2 000: 1 000 tokens at 10 000/min = 6 s.
        assert_eq!(
            b.try_take(2_000, t0),
            Err(Refusal::RetryAfter(Duration::from_secs(6)))
        );
        assert_eq!(b.time_until(2_000, t0), Some(Duration::from_secs(6)));
        let mut c = TokenBucket::new(3, MIN, t0);
        c.try_take(3, t0).unwrap();
        // 1 token at 3/min = 20 s exactly; 60e9 / 3 divides evenly.
        assert_eq!(c.time_until(1, t0), Some(Duration::from_secs(20)));
        let mut d = TokenBucket::new(7, MIN, t0);
        d.try_take(7, t0).unwrap();
        // 60e9 / 7 ns does not divide: rounded up so a retry at that instant succeeds.
        let wait = d.time_until(1, t0).unwrap();
        assert_eq!(wait, Duration::from_nanos(8_571_428_572));
        assert!(d.try_take(1, t0 + wait).is_ok());
    }

    #[test]
    fn refund_then_charge() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, MIN, t0);
        b.try_take(800, t0).unwrap();
        b.adjust(500, t0); // actual was 300
        assert_eq!(b.remaining(t0), 700);
        b.adjust(5_000, t0); // a refund never goes above capacity
        assert_eq!(b.remaining(t0), 1_000);
        b.try_take(1_000, t0).unwrap();
        b.adjust(-500, t0); // used 500 more than reserved: in debt
        assert_eq!(b.remaining(t0), 0);
        assert_eq!(b.used(t0), 1_500);
        // The debt must be refilled first: 500 + 1 tokens at 1000/min.
        assert_eq!(b.time_until(1, t0), Some(Duration::from_millis(30_060)));
        assert_eq!(b.time_to_full(t0), Duration::from_secs(90));
    }

    #[test]
    fn earlier_now_refills_nothing_and_keeps_the_clock() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let mut b = TokenBucket::new(60, MIN, t0);
        b.try_take(60, t1).unwrap();
        // A thread that read the clock at t0 but locked later sees no refill…
        assert!(b.try_take(1, t0).is_err());
        // …and did not rewind the bucket: one second after t1 is one token.
        assert!(b.try_take(1, t1 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn capacity_change_keeps_consumption() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, MIN, t0);
        b.try_take(40, t0).unwrap();
        b.set_capacity(200, t0);
        assert_eq!(b.remaining(t0), 160, "raising keeps the 40 used");
        b.set_capacity(50, t0);
        assert_eq!(b.remaining(t0), 50, "lowering clamps to the new capacity");
        b.set_capacity(50, t0);
        assert_eq!(b.remaining(t0), 50);
        let mut full = TokenBucket::new(10, MIN, t0);
        full.set_capacity(100, t0);
        assert_eq!(full.remaining(t0), 100, "a full bucket stays full");
        let mut empty = TokenBucket::new(100, MIN, t0);
        empty.try_take(100, t0).unwrap();
        empty.set_capacity(100_000, t0);
        assert_eq!(empty.remaining(t0), 99_900);
        empty.set_capacity(10, t0);
        assert_eq!(empty.remaining(t0), 10);
    }

    #[test]
    fn day_bucket_refills_continuously() {
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut b = TokenBucket::new(86_400, day, t0);
        b.try_take(86_400, t0).unwrap();
        assert_eq!(b.remaining(t0 + Duration::from_secs(3_600)), 3_600);
        assert_eq!(
            b.time_to_full(t0 + Duration::from_secs(3_600)),
            Duration::from_secs(82_800)
        );
    }

    #[test]
    fn used_rounds_so_a_refusal_adds_up() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, MIN, t0);
        b.try_take(1, t0).unwrap();
        b.try_take(1, t0).unwrap();
        let t1 = t0 + Duration::from_secs(20); // 2/3 of a token refilled
        assert!(b.try_take(1, t1).is_err());
        assert_eq!(b.used(t1), 2, "1.33 used reads 2, not 1");
        assert_eq!(b.used(t0 + MIN), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Take(u64),
        Charge(u64),
        Refund(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..5_000).prop_map(Op::Advance),
            (0u64..150).prop_map(Op::Take),
            (0u64..150).prop_map(Op::Charge),
            (0u64..300).prop_map(Op::Refund),
        ]
    }

    proptest! {
        /// Over every window of a random history that ends with an admission, the tokens
        /// admitted plus those charged after the fact never exceed C + rate · elapsed (the
        /// level is ≤ C at the window's start and ≥ 0 after any admission). Refunds are left
        /// out: they give consumption back.
        #[test]
        fn never_over_admits(
            cap in 1u64..200,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let period = Duration::from_secs(1);
            let t0 = Instant::now();
            let mut b = TokenBucket::new(cap, period, t0);
            let mut t_ms = 0u64;
            // (time in ms, tokens consumed, was an admission)
            let mut events: Vec<(u64, u64, bool)> = Vec::new();
            for o in &ops {
                let now = t0 + Duration::from_millis(t_ms);
                match *o {
                    Op::Advance(ms) => t_ms += ms,
                    Op::Take(n) => {
                        if b.try_take(n, now).is_ok() {
                            events.push((t_ms, n, true));
                        }
                    }
                    Op::Charge(n) => {
                        b.adjust(-(n as i64), now);
                        events.push((t_ms, n, false));
                    }
                    Op::Refund(_) => {}
                }
                prop_assert!(b.remaining(now) <= cap);
            }
            for i in 0..events.len() {
                let mut sum = 0u128;
                for &(t, n, admission) in &events[i..] {
                    sum += n as u128;
                    if !admission {
                        continue;
                    }
                    let elapsed_ms = (t - events[i].0) as u128;
                    // cap per second refills cap · elapsed_ms / 1000; compare × 1000.
                    prop_assert!(
                        sum * 1_000 <= cap as u128 * 1_000 + cap as u128 * elapsed_ms,
                        "consumed {sum} in {elapsed_ms} ms with capacity {cap}/s"
                    );
                }
            }
        }

        /// Whatever happens, a refund never lifts the level above capacity, and the level
        /// reported stays within [0, C].
        #[test]
        fn refunds_never_exceed_capacity(
            cap in 1u64..10_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(cap, MIN, t0);
            let mut t = t0;
            for o in ops {
                match o {
                    Op::Advance(ms) => t += Duration::from_millis(ms),
                    Op::Take(n) => { let _ = b.try_take(n, t); }
                    Op::Charge(n) => b.adjust(-(n as i64), t),
                    Op::Refund(n) => b.adjust(n as i64, t),
                }
                prop_assert!(b.remaining(t) <= cap);
                prop_assert!(b.level <= b.full());
                let wait = b.time_to_full(t);
                prop_assert!(wait <= MIN * 1_000);
            }
        }

        /// Waiting exactly `time_until` always makes the amount admissible.
        #[test]
        fn time_until_is_sufficient(cap in 1u64..100_000, take in 0u64..100_000, want in 0u64..100_000) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(cap, MIN, t0);
            let _ = b.try_take(take.min(cap), t0);
            match b.time_until(want, t0) {
                None => prop_assert!(want > cap),
                Some(wait) => prop_assert!(b.try_take(want, t0 + wait).is_ok()),
            }
        }
    }
}
