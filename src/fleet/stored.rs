//! Which replica stored a Responses API response: vLLM keeps stored responses in the memory of
//! the replica that created them, so `GET`/`DELETE`/`cancel` and `previous_response_id`
//! follow-ups must reach that replica. A bounded map, response id → where it lives and whose
//! key created it; the oldest entry is forgotten first (FIFO), so memory stays bounded whatever
//! clients do. Plain Rust; one short lock per Responses request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Longest response id remembered (vLLM's are `resp_` + 32 hex digits); longer ones are not.
pub const MAX_ID_BYTES: usize = 256;

/// Where a stored response lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    /// The model alias it was created under.
    pub alias: Arc<str>,
    pub cluster: Arc<str>,
    /// The replica's `host:port` (stable across reloads, unlike an index).
    pub replica: Arc<str>,
    /// The key that created it (`None` without auth): only it may reach the id.
    pub key: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Box<str>, StoredAt>,
    order: VecDeque<Box<str>>,
}

/// The bounded id → replica map.
#[derive(Debug, Default)]
pub struct ResponseAffinity {
    inner: Mutex<Inner>,
}

impl ResponseAffinity {
    /// Remember `id` (a later insert of the same id replaces it), keeping at most `capacity`.
    pub fn insert(&self, id: &str, at: StoredAt, capacity: usize) {
        if id.is_empty() || id.len() > MAX_ID_BYTES || capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.map.insert(id.into(), at).is_none() {
            inner.order.push_back(id.into());
        }
        while inner.map.len() > capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&oldest);
        }
        // Ids forgotten by `remove` (or inserted again after it) leave stale places in
        // `order`: compact it when it doubles, so it stays bounded (amortised O(1)).
        if inner.order.len() > capacity.saturating_mul(2) {
            let Inner { map, order } = &mut *inner;
            let mut kept = std::collections::HashSet::with_capacity(map.len());
            order.retain(|id| map.contains_key(id) && kept.insert(id.clone()));
        }
    }

    /// Where `id` lives, if remembered and created under `key`.
    pub fn get(&self, id: &str, key: Option<&str>) -> Option<StoredAt> {
        let inner = self.inner.lock().ok()?;
        let at = inner.map.get(id)?;
        (at.key.as_deref() == key).then(|| at.clone())
    }

    /// Forget `id` (after a successful `DELETE`).
    pub fn remove(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.map.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries held in the eviction order (≥ `len`, bounded).
    #[cfg(test)]
    fn order_len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(replica: &str, key: Option<&str>) -> StoredAt {
        StoredAt {
            alias: "m".into(),
            cluster: "c".into(),
            replica: replica.into(),
            key: key.map(Into::into),
        }
    }

    #[test]
    fn remembers_per_key_and_forgets_oldest() {
        let map = ResponseAffinity::default();
        map.insert("a", at("r1", Some("k1")), 2);
        map.insert("b", at("r2", Some("k1")), 2);
        assert_eq!(map.get("a", Some("k1")).unwrap().replica.as_ref(), "r1");
        assert!(map.get("a", Some("k2")).is_none(), "another key's id");
        assert!(map.get("a", None).is_none());
        map.insert("c", at("r1", Some("k1")), 2);
        assert!(map.get("a", Some("k1")).is_none(), "evicted");
        assert_eq!(map.len(), 2);
        map.remove("b");
        assert!(map.get("b", Some("k1")).is_none());
        map.insert(&"x".repeat(MAX_ID_BYTES + 1), at("r1", None), 2);
        assert_eq!(map.len(), 1);
    }

    proptest! {
        #[test]
        fn memory_stays_bounded(ops in proptest::collection::vec((0u8..3, 0u16..500), 1..2000), cap in 1usize..50) {
            let map = ResponseAffinity::default();
            for (op, id) in ops {
                let id = format!("resp_{id}");
                match op {
                    0 | 1 => map.insert(&id, at("r", None), cap),
                    _ => map.remove(&id),
                }
                prop_assert!(map.len() <= cap);
                prop_assert!(map.order_len() <= 2 * cap + 1);
            }
        }
    }
}
