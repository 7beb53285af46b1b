//! The limiter's side of lease syncing: collect what every leased bucket wants to exchange
//! with the fleet store, and hand the answers back. The store adapter (`distributed::leases`)
//! runs the exchange; nothing here does I/O, and the hot path is only ever blocked for the
//! few instructions of one bucket's `plan` / `apply` under its set's lock.

use std::sync::Arc;
use std::time::Instant;

use super::lease::{Grant, SyncOp};
use super::limiter::{LimitSet, Limiter, PERIODS};
use super::limits::{Dimension, Scope};

const DIMS: [Dimension; 3] = [
    Dimension::RequestsPerMinute,
    Dimension::TokensPerMinute,
    Dimension::TokensPerDay,
];

/// One bucket's exchange.
#[derive(Debug, Clone, Copy)]
pub struct DimOp {
    pub dim: Dimension,
    pub capacity: u64,
    pub period_ms: u64,
    pub op: SyncOp,
}

/// Every exchange of one scope (a key, a model alias, the gateway): one store call, since its
/// buckets share a hash slot.
#[derive(Debug)]
pub struct LeaseBatch {
    pub scope: Scope,
    /// Key name or alias; empty for the gateway.
    pub name: String,
    pub dims: Vec<DimOp>,
    set: Arc<LimitSet>,
    slots: Vec<usize>,
}

fn plan_set(scope: Scope, name: &str, set: &Arc<LimitSet>, now: Instant) -> Option<LeaseBatch> {
    let mut batch = LeaseBatch {
        scope,
        name: name.to_string(),
        dims: Vec::new(),
        set: set.clone(),
        slots: Vec::new(),
    };
    let mut b = set.lock();
    for (i, dim) in DIMS.iter().enumerate() {
        let Some(leased) = b.active(i).and_then(|s| s.leased()) else {
            continue;
        };
        let op = leased.plan(now);
        if op.is_empty() {
            continue;
        }
        batch.dims.push(DimOp {
            dim: *dim,
            capacity: leased.capacity(),
            period_ms: u64::try_from(PERIODS[i].as_millis()).unwrap_or(u64::MAX),
            op,
        });
        batch.slots.push(i);
    }
    (!batch.dims.is_empty()).then_some(batch)
}

impl Limiter {
    /// What every leased bucket wants from the store now; buckets that want nothing (idle,
    /// already returned, lease still full) are left out, so the store's load follows active
    /// keys, not requests.
    pub fn plan_leases(&self, now: Instant) -> Vec<LeaseBatch> {
        if self.lease.is_none() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for e in self.keys.iter() {
            out.extend(plan_set(Scope::Key, e.key(), e.value(), now));
        }
        for e in self.models.iter() {
            out.extend(plan_set(Scope::Model, e.key(), e.value(), now));
        }
        out.extend(plan_set(Scope::Global, "", &self.global, now));
        out
    }

    /// The store's answers (one per `dims` entry, in order), or `None` if the exchange failed
    /// and everything given must be taken back.
    pub fn apply_leases(&self, batch: LeaseBatch, grants: Option<&[Grant]>) {
        let mut b = batch.set.lock();
        for (n, &i) in batch.slots.iter().enumerate() {
            let Some(leased) = b.active(i).and_then(|s| s.leased()) else {
                continue;
            };
            match grants.and_then(|g| g.get(n)) {
                Some(grant) => leased.apply(*grant),
                None => leased.abandon(batch.dims[n].op),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::lease::{LeaseParams, LeaseShared, StoreBucket};
    use crate::ratelimit::{AdmissionRequest, GlobalLimits, KeyLimits, ModelLimits};

    /// Three limiters sharing one store bucket for 70 s, each trying 10 times per 100 ms;
    /// returns what was admitted (requests, or metered tokens when `actual` > 0).
    fn hammer(limits: KeyLimits, capacity: u64, estimate: u64, actual: u64) -> u64 {
        let t0 = Instant::now();
        let shared = LeaseShared::new(LeaseParams::default());
        shared.set_instances(3);
        let fleet: Vec<Limiter> = (0..3).map(|_| Limiter::leased(shared.clone())).collect();
        let mut store = StoreBucket::new(capacity, 60_000, 0);
        let req = AdmissionRequest {
            key_name: "acme",
            key_limits: &limits,
            model: "m",
            model_limits: &ModelLimits::default(),
            global_limits: &GlobalLimits::default(),
            estimated_tokens: estimate,
        };
        let mut admitted = 0;
        // 70 s, every instance tries 10 times per 100 ms sync interval.
        for tick in 0..700u64 {
            let now = t0 + std::time::Duration::from_millis(tick * 100);
            for l in &fleet {
                for _ in 0..10 {
                    if let Ok(r) = l.admit(&req, now) {
                        admitted += if actual > 0 { actual } else { 1 };
                        r.settle(actual, now);
                    }
                }
                for batch in l.plan_leases(now) {
                    assert_eq!(batch.scope, Scope::Key);
                    let grants: Vec<Grant> = batch
                        .dims
                        .iter()
                        .map(|d| store.exchange(d.op, tick * 100))
                        .collect();
                    l.apply_leases(batch, Some(&grants));
                }
            }
        }
        admitted
    }

    #[test]
    fn a_hammered_key_is_limited_across_instances_by_one_store() {
        let limits = KeyLimits {
            requests_per_minute: Some(60),
            ..KeyLimits::default()
        };
        let admitted = hammer(limits, 60, 1, 0);
        // C + r·t = 60 + 70, plus at most N·(L + B) = 6; not starved.
        assert!((120..=136).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn a_hammered_token_limit_is_neither_exceeded_nor_starved() {
        let limits = KeyLimits {
            tokens_per_minute: Some(6_000),
            ..KeyLimits::default()
        };
        // Reserve 78, use 44: refunds stay in the local lease.
        let admitted = hammer(limits, 6_000, 78, 44);
        // C + r·t = 6 000 + 7 000, plus N·(L + B) = 600.
        assert!((12_000..=13_600).contains(&admitted), "admitted {admitted}");
    }
}
