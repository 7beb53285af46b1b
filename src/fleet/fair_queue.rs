//! A bounded wait queue for one saturated cluster: strict priority between classes, start-time
//! fair queuing (SFQ, Goyal et al.) between keys of the same priority.
//!
//! Every entry gets a virtual start tag `max(V, last_finish[key])` and the key's finish tag
//! moves to `start + 1` (each request costs one unit: a slot). Entries leave in order of
//! (priority descending, start tag, arrival). `V` is the start tag of the last entry popped,
//! so a key that queues ten requests gets tags `V..V+10` while a light key arriving later
//! still starts at `V`: it waits behind at most one request per other backlogged key of its
//! priority, however many each of them queued. A key with nothing queued forgets its history
//! (a new flow starts at `V`), so memory is bounded by the depth.
//!
//! Pure data: the caller supplies the payload (e.g. a wake-up channel) and the locking.

use std::collections::{BTreeMap, HashMap};

/// Where an entry sits in the order; smaller leaves first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    /// `i32::MAX - priority`: higher priorities sort first.
    rank: u64,
    start: u64,
    seq: u64,
}

impl Order {
    pub fn priority(&self) -> i32 {
        (i64::from(i32::MAX) - self.rank as i64) as i32
    }
}

/// The queue already holds `max_depth` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the queue is full ({max_depth} waiting)")]
pub struct Full {
    pub max_depth: usize,
}

/// An entry taken off the queue.
#[derive(Debug)]
pub struct Popped<T> {
    pub id: u64,
    pub order: Order,
    pub key: String,
    pub item: T,
}

#[derive(Debug)]
struct Entry<T> {
    id: u64,
    key: String,
    item: T,
}

#[derive(Debug, Default)]
struct Flow {
    finish: u64,
    queued: usize,
}

#[derive(Debug)]
pub struct FairQueue<T> {
    max_depth: usize,
    entries: BTreeMap<Order, Entry<T>>,
    by_id: HashMap<u64, Order>,
    flows: HashMap<String, Flow>,
    virtual_time: u64,
    next_seq: u64,
}

impl<T> FairQueue<T> {
    pub fn new(max_depth: usize) -> FairQueue<T> {
        FairQueue {
            max_depth,
            entries: BTreeMap::new(),
            by_id: HashMap::new(),
            flows: HashMap::new(),
            virtual_time: 0,
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// A later reload may change the depth; entries beyond it stay until they leave.
    pub fn set_max_depth(&mut self, max_depth: usize) {
        self.max_depth = max_depth;
    }

    /// Queue `item` for `key` at `priority`; returns its id.
    pub fn push(&mut self, key: &str, priority: i32, item: T) -> Result<u64, Full> {
        if self.entries.len() >= self.max_depth {
            return Err(Full {
                max_depth: self.max_depth,
            });
        }
        let flow = self.flows.entry(key.to_string()).or_default();
        let start = flow.finish.max(self.virtual_time);
        flow.finish = start + 1;
        flow.queued += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let order = Order {
            rank: (i64::from(i32::MAX) - i64::from(priority)) as u64,
            start,
            seq,
        };
        self.insert(order, seq, key.to_string(), item);
        Ok(seq)
    }

    /// Put a popped entry back where it was (its hand-off could not be used). Ignores the
    /// depth limit: the entry was already counted.
    pub fn requeue(&mut self, popped: Popped<T>) {
        let flow = self.flows.entry(popped.key.clone()).or_default();
        flow.queued += 1;
        flow.finish = flow.finish.max(popped.order.start + 1);
        self.insert(popped.order, popped.id, popped.key, popped.item);
    }

    fn insert(&mut self, order: Order, id: u64, key: String, item: T) {
        self.by_id.insert(id, order);
        self.entries.insert(order, Entry { id, key, item });
    }

    /// The id of the entry [`FairQueue::pop`] would return.
    pub fn head_id(&self) -> Option<u64> {
        self.entries.first_key_value().map(|(_, e)| e.id)
    }

    /// The head: highest priority, then the smallest start tag.
    pub fn pop(&mut self) -> Option<Popped<T>> {
        let (order, entry) = self.entries.pop_first()?;
        self.virtual_time = self.virtual_time.max(order.start);
        Some(self.taken(order, entry))
    }

    /// Take entry `id` out (its client left or its deadline passed).
    pub fn remove(&mut self, id: u64) -> Option<Popped<T>> {
        let order = self.by_id.get(&id).copied()?;
        let entry = self.entries.remove(&order)?;
        Some(self.taken(order, entry))
    }

    fn taken(&mut self, order: Order, entry: Entry<T>) -> Popped<T> {
        self.by_id.remove(&entry.id);
        if let Some(flow) = self.flows.get_mut(&entry.key) {
            flow.queued = flow.queued.saturating_sub(1);
            if flow.queued == 0 {
                self.flows.remove(&entry.key);
            }
        }
        Popped {
            id: entry.id,
            order,
            key: entry.key,
            item: entry.item,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(q: &mut FairQueue<u32>) -> Vec<(String, u32)> {
        std::iter::from_fn(|| q.pop().map(|p| (p.key, p.item))).collect()
    }

    #[test]
    fn higher_priority_leaves_first_then_arrival() {
        let mut q = FairQueue::new(10);
        q.push("a", 0, 1).unwrap();
        q.push("a", 0, 2).unwrap();
        q.push("b", 5, 3).unwrap();
        q.push("c", -1, 4).unwrap();
        let order: Vec<u32> = drain(&mut q).into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, vec![3, 1, 2, 4]);
    }

    #[test]
    fn a_light_key_is_not_starved_by_a_heavy_one() {
        let mut q = FairQueue::new(100);
        for i in 0..10 {
            q.push("heavy", 0, i).unwrap();
        }
        // One served, then the light key arrives behind ten queued heavy requests.
        assert_eq!(q.pop().unwrap().key, "heavy");
        q.push("light", 0, 99).unwrap();
        let next: Vec<String> = (0..2).map(|_| q.pop().unwrap().key).collect();
        assert!(next.contains(&"light".to_string()), "{next:?}");
    }

    #[test]
    fn depth_is_bounded_and_removal_frees_room() {
        let mut q = FairQueue::new(2);
        let a = q.push("a", 0, 1).unwrap();
        q.push("b", 0, 2).unwrap();
        assert_eq!(q.push("c", 0, 3), Err(Full { max_depth: 2 }));
        assert_eq!(q.remove(a).map(|p| p.item), Some(1));
        assert!(q.remove(a).is_none());
        q.push("c", 0, 3).unwrap();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn requeue_puts_an_entry_back_at_the_head() {
        let mut q = FairQueue::new(4);
        q.push("a", 0, 1).unwrap();
        q.push("b", 0, 2).unwrap();
        let head = q.pop().unwrap();
        assert_eq!(head.item, 1);
        q.push("c", 0, 3).unwrap();
        q.requeue(head);
        let order: Vec<u32> = drain(&mut q).into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(q.flows.is_empty());
    }

    proptest! {
        /// Within one priority, while both keys still have entries queued, their served
        /// counts never differ by more than one, whatever each queued.
        #[test]
        fn backlogged_keys_share_equally(heavy in 1usize..40, light in 1usize..40) {
            let mut q = FairQueue::new(100);
            for i in 0..heavy { q.push("h", 0, i as u32).unwrap(); }
            for i in 0..light { q.push("l", 0, i as u32).unwrap(); }
            let (mut h, mut l) = (0usize, 0usize);
            while let Some(p) = q.pop() {
                if p.key == "h" { h += 1 } else { l += 1 }
                if h < heavy && l < light {
                    prop_assert!(h.abs_diff(l) <= 1, "h={h} l={l}");
                }
            }
            prop_assert_eq!((h, l), (heavy, light));
        }

        /// Random pushes, pops and removals: never more than the depth, every pop is of the
        /// highest priority queued, nothing is lost, and the key table stays bounded.
        #[test]
        fn random_operations_keep_the_invariants(
            ops in proptest::collection::vec((0u8..3, 0u8..4, -2i32..3), 1..200),
            depth in 1usize..12,
        ) {
            let mut q = FairQueue::new(depth);
            let mut live: Vec<(u64, i32)> = Vec::new();
            for (op, key, prio) in ops {
                match op {
                    0 => if let Ok(id) = q.push(&format!("k{key}"), prio, 0u32) {
                        live.push((id, prio));
                    } else {
                        prop_assert_eq!(q.len(), depth);
                    },
                    1 => if let Some(p) = q.pop() {
                        let best = live.iter().map(|&(_, pr)| pr).max();
                        prop_assert_eq!(Some(p.order.priority()), best);
                        live.retain(|&(id, _)| id != p.id);
                    },
                    _ => if let Some(&(id, _)) = live.first() {
                        prop_assert!(q.remove(id).is_some());
                        live.remove(0);
                    },
                }
                prop_assert!(q.len() <= depth);
                prop_assert_eq!(q.len(), live.len());
                prop_assert!(q.flows.len() <= q.len());
            }
        }
    }
}
