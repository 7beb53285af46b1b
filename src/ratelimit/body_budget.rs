//! A process-wide budget of request-body bytes held in memory, with a per-key share (issue #13):
//! bodies are buffered whole before they are scanned, so without it enough slow or large uploads
//! exhaust memory whatever the per-request limit says. Bytes are reserved as they arrive and
//! released when the request's [`BodyLease`] drops. Pure logic: no Pingora types.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// The limits in force (from the config snapshot; a reload changes them for new reservations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Body bytes all requests together may hold.
    pub total: u64,
    /// Body bytes the requests of one key together may hold.
    pub per_key: u64,
}

/// Why bytes could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// Too much is held right now: retry later (503 + `Retry-After`).
    Busy,
    /// This one request is larger than the key's share: it can never fit (413).
    NeverFits { limit: u64 },
}

/// Counters shared by all requests.
#[derive(Debug, Default)]
pub struct BodyBudget {
    used: AtomicU64,
    per_key: DashMap<String, Arc<AtomicU64>>,
}

/// One request's reservation; returns its bytes on drop.
#[derive(Debug)]
pub struct BodyLease {
    budget: Arc<BodyBudget>,
    key: Option<Arc<AtomicU64>>,
    held: u64,
}

impl BodyBudget {
    /// Bytes held by all requests now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes held by one key's requests now.
    pub fn used_by(&self, key: &str) -> u64 {
        self.per_key
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// An empty lease for one request (`key`: the API key's name, `None` without auth).
    pub fn lease(self: &Arc<Self>, key: Option<&str>) -> BodyLease {
        // A read lookup first: the usual case (a key seen before) takes no shard write lock
        // and allocates nothing.
        let key = key.map(|k| match self.per_key.get(k) {
            Some(counter) => Arc::clone(&counter),
            None => self
                .per_key
                .entry(k.to_string())
                .or_insert_with(|| Arc::new(AtomicU64::new(0)))
                .clone(),
        });
        BodyLease {
            budget: Arc::clone(self),
            key,
            held: 0,
        }
    }
}

impl BodyLease {
    /// Bytes this request holds.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Reserve `more` bytes before they are stored. On refusal nothing is reserved.
    pub fn grow(&mut self, more: u64, limits: BudgetLimits) -> Result<(), BudgetRefusal> {
        let wanted = self.held.saturating_add(more);
        let never = limits.per_key.min(limits.total);
        if wanted > never {
            return Err(BudgetRefusal::NeverFits { limit: never });
        }
        if !reserve(&self.budget.used, more, limits.total) {
            return Err(BudgetRefusal::Busy);
        }
        if let Some(key) = &self.key {
            if !reserve(key, more, limits.per_key) {
                self.budget.used.fetch_sub(more, Ordering::AcqRel);
                return Err(BudgetRefusal::Busy);
            }
        }
        self.held = wanted;
        Ok(())
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        if let Some(key) = &self.key {
            key.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

/// Add `more` to `counter` unless that would pass `limit`.
fn reserve(counter: &AtomicU64, more: u64, limit: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            now.checked_add(more).filter(|sum| *sum <= limit)
        })
        .is_ok()
}

/// The default total budget: a quarter of the memory available to the process (the cgroup
/// limit when there is one, else physical memory), at least 64 MiB; 1 GiB if neither is known.
pub fn default_total(memory_bytes: Option<u64>) -> u64 {
    memory_bytes.map_or(1 << 30, |m| (m / 4).max(64 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BudgetLimits = BudgetLimits {
        total: 100,
        per_key: 60,
    };

    #[test]
    fn grows_until_the_key_share_then_the_total() {
        let budget = Arc::new(BodyBudget::default());
        let mut a = budget.lease(Some("a"));
        assert_eq!(a.grow(50, LIMITS), Ok(()));
        let mut a2 = budget.lease(Some("a"));
        assert_eq!(a2.grow(20, LIMITS), Err(BudgetRefusal::Busy));
        let mut b = budget.lease(Some("b"));
        assert_eq!(b.grow(50, LIMITS), Ok(()));
        let mut c = budget.lease(None);
        assert_eq!(c.grow(1, LIMITS), Err(BudgetRefusal::Busy));
        assert_eq!((budget.used(), budget.used_by("a")), (100, 50));
        drop(a);
        assert_eq!((budget.used(), budget.used_by("a")), (50, 0));
        assert_eq!(a2.grow(20, LIMITS), Ok(()));
        assert_eq!(
            c.grow(61, LIMITS),
            Err(BudgetRefusal::NeverFits { limit: 60 })
        );
        drop((a2, b, c));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_refusal_reserves_nothing() {
        let budget = Arc::new(BodyBudget::default());
        let mut a = budget.lease(Some("a"));
        assert!(a.grow(60, LIMITS).is_ok());
        let mut b = budget.lease(Some("a"));
        assert_eq!(b.grow(10, LIMITS), Err(BudgetRefusal::Busy));
        assert_eq!((budget.used(), b.held()), (60, 0));
    }

    #[test]
    fn default_is_a_quarter_of_memory() {
        assert_eq!(default_total(Some(24 << 30)), 6 << 30);
        assert_eq!(default_total(Some(100 << 20)), 64 << 20);
        assert_eq!(default_total(None), 1 << 30);
    }
}
