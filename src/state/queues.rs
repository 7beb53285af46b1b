//! The admission queues of saturated clusters: one [`ClusterQueue`] per cluster that has
//! `queue = { .. }`, kept by name across reloads so waiters and the slots being freed meet in
//! the same queue whatever snapshot each request started on.
//!
//! Hand-off: when a request of the cluster finishes, [`ClusterQueue::release`] pops the head
//! and wakes it alone (no thundering herd). While anyone is queued or holds an unclaimed
//! hand-off the cluster is [`ClusterQueue::is_busy`], and new arrivals queue behind them
//! instead of taking the freed slot (no barging).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::fleet::fair_queue::{FairQueue, Full, Order, Popped};
use crate::metrics;

/// Queues by cluster name; only touched when a snapshot is built.
#[derive(Default)]
pub struct AdmissionQueues {
    queues: Mutex<HashMap<String, Arc<ClusterQueue>>>,
}

impl AdmissionQueues {
    /// The cluster's queue, created on first use; `max_depth` follows the latest config.
    pub fn get_or_insert(&self, cluster: &str, max_depth: usize) -> Arc<ClusterQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues
            .entry(cluster.to_string())
            .or_insert_with(|| Arc::new(ClusterQueue::new(cluster, max_depth)));
        queue.lock().queue.set_max_depth(max_depth);
        queue.clone()
    }
}

pub struct ClusterQueue {
    inner: Mutex<Inner>,
    /// Queued entries plus unclaimed hand-offs: read without the lock on every slot release.
    busy: AtomicUsize,
    depth: IntGauge,
    wait: Histogram,
    /// `tokengate_queue_rejected_total` by reason: full, timeout, client_closed.
    rejected: [IntCounter; 3],
}

/// Why a request left the queue without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Full,
    Timeout,
    ClientClosed,
}

impl Rejected {
    const ALL: [Rejected; 3] = [Rejected::Full, Rejected::Timeout, Rejected::ClientClosed];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Full => "full",
            Rejected::Timeout => "timeout",
            Rejected::ClientClosed => "client_closed",
        }
    }
}

struct Inner {
    queue: FairQueue<oneshot::Sender<Order>>,
    /// Entries popped and woken that have neither used nor returned their slot yet.
    handoffs: usize,
}

impl ClusterQueue {
    fn new(cluster: &str, max_depth: usize) -> ClusterQueue {
        ClusterQueue {
            inner: Mutex::new(Inner {
                queue: FairQueue::new(max_depth),
                handoffs: 0,
            }),
            busy: AtomicUsize::new(0),
            depth: metrics::QUEUE_DEPTH.with_label_values(&[cluster]),
            wait: metrics::QUEUE_WAIT.with_label_values(&[cluster]),
            rejected: Rejected::ALL
                .map(|r| metrics::QUEUE_REJECTED.with_label_values(&[cluster, r.as_str()])),
        }
    }

    /// A queued request got its slot after `waited`.
    pub fn observe_wait(&self, waited: std::time::Duration) {
        self.wait.observe(waited.as_secs_f64());
    }

    pub fn count_rejected(&self, why: Rejected) {
        self.rejected[why as usize].inc();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Someone is waiting or about to take a freed slot: new arrivals must queue.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    fn publish(&self, inner: &Inner) {
        self.busy
            .store(inner.queue.len() + inner.handoffs, Ordering::Release);
        self.depth.set(inner.queue.len() as i64);
    }

    /// Wait in line as `key` at `priority`.
    pub fn enqueue(self: &Arc<Self>, key: &str, priority: i32) -> Result<Waiter, Full> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        // A woken waiter that finds its slot gone goes back in line: count it against the
        // depth until it has claimed, so requeues never push the queue past `max_depth`.
        let max_depth = inner.queue.max_depth();
        if inner.queue.len() + inner.handoffs >= max_depth {
            return Err(Full { max_depth });
        }
        let id = inner.queue.push(key, priority, tx)?;
        self.publish(&inner);
        Ok(Waiter {
            queue: self.clone(),
            id,
            key: key.to_string(),
            rx,
            state: WaiterState::Queued,
        })
    }

    /// A slot of the cluster was freed: hand it to the head of the queue, if any.
    pub fn release(&self) {
        if !self.is_busy() {
            return;
        }
        let mut inner = self.lock();
        self.hand_off(&mut inner);
        self.publish(&inner);
    }

    fn hand_off(&self, inner: &mut Inner) {
        while let Some(head) = inner.queue.pop() {
            // The receiver lives as long as its waiter, whose drop takes this lock first.
            if head.item.send(head.order).is_ok() {
                inner.handoffs += 1;
                return;
            }
        }
    }

    /// The head's own check (a wake-up may have been missed, or the saturation was the
    /// replicas' scraped queues, which no finishing request of ours frees): take the slot
    /// when `id` is the head and no hand-off is outstanding.
    fn take_if_head(&self, id: u64) -> Option<Order> {
        let mut inner = self.lock();
        if inner.handoffs > 0 || inner.queue.head_id() != Some(id) {
            return None;
        }
        let head = inner.queue.pop()?;
        inner.handoffs += 1;
        self.publish(&inner);
        Some(head.order)
    }
}

/// Held with a replica slot of a queued cluster: when dropped (after the slot), the freed
/// slot goes to the head of the queue.
pub struct SlotRelease(Arc<ClusterQueue>);

impl SlotRelease {
    pub fn new(queue: Arc<ClusterQueue>) -> SlotRelease {
        SlotRelease(queue)
    }
}

impl Drop for SlotRelease {
    fn drop(&mut self) {
        self.0.release();
    }
}

enum WaiterState {
    Queued,
    /// Woken with this place in line; the slot is ours to try.
    HandedOff(Order),
    Done,
}

/// One request's place in line. Dropping it (client gone, deadline) leaves the queue at once
/// and passes an unused hand-off on to the next in line.
pub struct Waiter {
    queue: Arc<ClusterQueue>,
    id: u64,
    key: String,
    rx: oneshot::Receiver<Order>,
    state: WaiterState,
}

/// What woke a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A slot is ours to try: select a replica, then [`Waiter::claim`] or
    /// [`Waiter::requeue`].
    Slot,
    /// Nothing yet; call [`Waiter::wait`] again.
    Recheck,
}

impl Waiter {
    /// Wait for a hand-off, at most `recheck`; at that point the head checks for itself.
    pub async fn wait(&mut self, recheck: std::time::Duration) -> Wake {
        if let WaiterState::HandedOff(_) = self.state {
            return Wake::Slot;
        }
        match tokio::time::timeout(recheck, &mut self.rx).await {
            Ok(Ok(order)) => {
                self.state = WaiterState::HandedOff(order);
                Wake::Slot
            }
            // The sender is only dropped with a handed-off entry; treat as a recheck.
            Ok(Err(_)) | Err(_) => match self.queue.take_if_head(self.id) {
                Some(order) => {
                    self.state = WaiterState::HandedOff(order);
                    Wake::Slot
                }
                None => Wake::Recheck,
            },
        }
    }

    /// The hand-off was used: this request holds a replica slot now.
    pub fn claim(mut self) {
        if let WaiterState::HandedOff(_) = self.state {
            let mut inner = self.queue.lock();
            inner.handoffs = inner.handoffs.saturating_sub(1);
            self.queue.publish(&inner);
        }
        self.state = WaiterState::Done;
    }

    /// The slot was gone by the time we looked (e.g. taken by a retry): back to our place.
    pub fn requeue(&mut self) {
        let WaiterState::HandedOff(order) = self.state else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        let mut inner = self.queue.lock();
        inner.handoffs = inner.handoffs.saturating_sub(1);
        inner.queue.requeue(Popped {
            id: self.id,
            order,
            key: self.key.clone(),
            item: tx,
        });
        self.queue.publish(&inner);
        self.rx = rx;
        self.state = WaiterState::Queued;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.queue.lock();
        match self.state {
            WaiterState::Done => return,
            WaiterState::Queued if inner.queue.remove(self.id).is_some() => {}
            // Handed off (perhaps just now, before we saw it): pass the slot on.
            WaiterState::Queued | WaiterState::HandedOff(_) => {
                inner.handoffs = inner.handoffs.saturating_sub(1);
                self.queue.hand_off(&mut inner);
            }
        }
        self.queue.publish(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(5);

    fn queue(depth: usize) -> Arc<ClusterQueue> {
        Arc::new(ClusterQueue::new("unit-test", depth))
    }

    #[tokio::test]
    async fn a_release_wakes_only_the_head() {
        let q = queue(4);
        let mut a = q.enqueue("a", 0).unwrap();
        let mut b = q.enqueue("b", 0).unwrap();
        assert!(q.is_busy());
        q.release();
        assert_eq!(a.wait(LONG).await, Wake::Slot);
        // b was not woken: its wait times out and it is not the head while a holds a hand-off.
        assert_eq!(b.wait(Duration::from_millis(20)).await, Wake::Recheck);
        a.claim();
        assert_eq!(q.depth(), 1);
        assert!(q.is_busy());
        drop(b);
        assert!(!q.is_busy());
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn a_dropped_hand_off_passes_to_the_next() {
        let q = queue(4);
        let a = q.enqueue("a", 0).unwrap();
        let mut b = q.enqueue("b", 0).unwrap();
        q.release();
        drop(a);
        assert_eq!(b.wait(LONG).await, Wake::Slot);
        b.claim();
        assert!(!q.is_busy());
    }

    #[tokio::test]
    async fn requeue_keeps_the_place_and_full_is_refused() {
        let q = queue(2);
        let mut a = q.enqueue("a", 0).unwrap();
        let _b = q.enqueue("b", 0).unwrap();
        assert!(q.enqueue("c", 0).is_err());
        q.release();
        assert_eq!(a.wait(LONG).await, Wake::Slot);
        a.requeue();
        assert_eq!(q.depth(), 2);
        // The head checks for itself when no hand-off is outstanding.
        assert_eq!(a.wait(Duration::from_millis(10)).await, Wake::Slot);
        a.claim();
        assert_eq!(q.depth(), 1);
    }

    proptest::proptest! {
        /// Any interleaving of arrivals, releases, wake-ups, claims, requeues and departures:
        /// the lock-free `busy` count always equals what is queued plus the outstanding
        /// hand-offs, and once everyone has left nothing is counted (no leaked hand-off can
        /// leave the cluster "busy" forever).
        #[test]
        fn hand_offs_never_leak(ops in proptest::collection::vec((0u8..6, 0usize..6), 1..120)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                let q = queue(4);
                let mut waiters: Vec<Option<Waiter>> = Vec::new();
                for (op, i) in ops {
                    match op {
                        0 => if let Ok(w) = q.enqueue(&format!("k{i}"), (i % 2) as i32) {
                            waiters.push(Some(w));
                        },
                        1 => q.release(),
                        2 => if let Some(Some(w)) = waiters.get_mut(i) {
                            let _ = w.wait(Duration::ZERO).await;
                        },
                        3 => if let Some(slot) = waiters.get_mut(i) {
                            if let Some(w) = slot.take_if(|w| matches!(w.state, WaiterState::HandedOff(_))) {
                                w.claim();
                            }
                        },
                        4 => if let Some(Some(w)) = waiters.get_mut(i) {
                            w.requeue();
                        },
                        _ => if let Some(slot) = waiters.get_mut(i) {
                            slot.take();
                        },
                    }
                    let inner = q.lock();
                    proptest::prop_assert_eq!(
                        q.busy.load(Ordering::Acquire),
                        inner.queue.len() + inner.handoffs
                    );
                    proptest::prop_assert!(inner.queue.len() + inner.handoffs <= 4);
                }
                waiters.clear();
                proptest::prop_assert!(!q.is_busy());
                proptest::prop_assert_eq!(q.depth(), 0);
                Ok(())
            })?;
        }
    }
}
