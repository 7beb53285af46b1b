//! One bucket slot of a limit set: a local token bucket (single node) or a leased share of a
//! fleet-wide bucket (fleet mode). The limiter calls the same operations on either.

use std::time::{Duration, Instant};

use super::bucket::{Refusal, TokenBucket};
use super::lease::LeasedBucket;

#[derive(Debug, Clone)]
pub enum Slot {
    Local(TokenBucket),
    Leased(LeasedBucket),
}

impl Slot {
    pub fn capacity(&self) -> u64 {
        match self {
            Slot::Local(b) => b.capacity(),
            Slot::Leased(b) => b.capacity(),
        }
    }

    pub fn check(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        match self {
            Slot::Local(b) => b.check(amount, now),
            Slot::Leased(b) => b.check(amount, now),
        }
    }

    pub fn try_take(&mut self, amount: u64, now: Instant) -> Result<(), Refusal> {
        match self {
            Slot::Local(b) => b.try_take(amount, now),
            Slot::Leased(b) => b.try_take(amount, now),
        }
    }

    pub fn adjust(&mut self, delta: i64, now: Instant) {
        match self {
            Slot::Local(b) => b.adjust(delta, now),
            Slot::Leased(b) => b.adjust(delta, now),
        }
    }

    pub fn remaining(&mut self, now: Instant) -> u64 {
        match self {
            Slot::Local(b) => b.remaining(now),
            Slot::Leased(b) => b.remaining(now),
        }
    }

    pub fn time_to_full(&mut self, now: Instant) -> Duration {
        match self {
            Slot::Local(b) => b.time_to_full(now),
            Slot::Leased(b) => b.time_to_full(now),
        }
    }

    /// `used` for a 429 message refusing `requested`: rounded so that used + requested >
    /// limit.
    pub fn used_for_refusal(&mut self, requested: u64, now: Instant) -> u64 {
        match self {
            Slot::Local(b) => b.used(now),
            Slot::Leased(b) => b.used_for_refusal(requested, now),
        }
    }

    pub fn set_capacity(&mut self, capacity: u64, now: Instant) {
        match self {
            Slot::Local(b) => b.set_capacity(capacity, now),
            Slot::Leased(b) => b.set_capacity(capacity, now),
        }
    }

    pub fn leased(&mut self) -> Option<&mut LeasedBucket> {
        match self {
            Slot::Local(_) => None,
            Slot::Leased(b) => Some(b),
        }
    }
}
