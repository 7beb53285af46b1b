//! The process-wide registry of replica states. Config reloads look states up by id instead
//! of creating new ones, so health, ejections and in-flight counts carry over; replicas that
//! left the config are dropped from the registry (requests still holding them finish
//! normally, the `Arc` keeps the state alive until then).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use super::health::HealthRules;
use super::replica::{ReplicaId, ReplicaState};
use super::view::ReplicaView;

#[derive(Debug, Default)]
pub struct Fleet {
    replicas: DashMap<ReplicaId, Arc<ReplicaState>>,
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// The state of `cluster/addr`, created if new (starting unhealthy when `rules` has active
    /// checks). An existing state gets `rules` as its new thresholds.
    pub fn get_or_insert(
        &self,
        cluster: &str,
        addr: SocketAddr,
        rules: &HealthRules,
    ) -> Arc<ReplicaState> {
        let id = ReplicaId::new(cluster, addr);
        let state = Arc::clone(
            self.replicas
                .entry(id)
                .or_insert_with(|| Arc::new(ReplicaState::new(cluster, addr, rules.clone())))
                .value(),
        );
        // Outside the shard lock: set_rules takes the replica's own mutex.
        state.set_rules(rules.clone());
        state
    }

    pub fn get(&self, id: &ReplicaId) -> Option<Arc<ReplicaState>> {
        self.replicas.get(id).map(|e| Arc::clone(e.value()))
    }

    /// Keep only the replicas of the new config; returns how many were dropped.
    pub fn retain(&self, live: &HashSet<ReplicaId>) -> usize {
        let before = self.replicas.len();
        self.replicas.retain(|id, _| live.contains(id));
        before.saturating_sub(self.replicas.len())
    }

    /// Every state, sorted by id (for the probe and scrape tasks).
    pub fn all(&self) -> Vec<Arc<ReplicaState>> {
        let mut v: Vec<_> = self
            .replicas
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Admin drain/undrain. `None` when no such replica; else the previous value.
    pub fn set_draining(&self, id: &ReplicaId, draining: bool) -> Option<bool> {
        self.get(id).map(|r| r.set_draining(draining))
    }

    /// Admin view of every replica, sorted by id.
    pub fn snapshot(&self, now: Instant) -> Vec<ReplicaView> {
        self.all().iter().map(|r| ReplicaView::of(r, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn state_survives_reload_and_retain_drops_the_rest() {
        let fleet = Fleet::new();
        let rules = HealthRules::default();
        let t = Instant::now();
        let a = fleet.get_or_insert("c", addr(1), &rules);
        let _b = fleet.get_or_insert("c", addr(2), &rules);
        a.on_probe(true, t);
        let _g = a.begin();
        // Reload: same id, same state.
        let a2 = fleet.get_or_insert("c", addr(1), &rules);
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(a2.is_eligible(t));
        assert_eq!(a2.in_flight(), 1);
        let live: HashSet<_> = [ReplicaId::new("c", addr(1))].into_iter().collect();
        assert_eq!(fleet.retain(&live), 1);
        assert_eq!(fleet.len(), 1);
        assert_eq!(
            fleet.set_draining(&ReplicaId::new("c", addr(1)), true),
            Some(false)
        );
        assert_eq!(
            fleet.set_draining(&ReplicaId::new("c", addr(2)), true),
            None
        );
        let snap = fleet.snapshot(t);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].id, "c/10.0.0.1:1");
    }

    #[test]
    fn reload_updates_rules() {
        let fleet = Fleet::new();
        let t = Instant::now();
        let a = fleet.get_or_insert("c", addr(1), &HealthRules::default());
        assert!(!a.is_eligible(t));
        let no_checks = HealthRules {
            active_checks: false,
            ..HealthRules::default()
        };
        fleet.get_or_insert("c", addr(1), &no_checks);
        assert!(a.is_eligible(t));
    }
}
