//! The background service that runs active health probes and metrics scrapes of every
//! replica in the current snapshot (retargeted on every reload).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;

use crate::fleet::probe::{ProbeTarget, Prober};
use crate::fleet::Transition;
use crate::state::{AppState, Snapshot};

pub struct HealthService {
    pub prober: Arc<Prober>,
    state: Arc<AppState>,
}

/// Every replica of a snapshot, with its cluster's settings.
pub fn targets(snapshot: &Snapshot) -> Vec<ProbeTarget> {
    let mut out = Vec::new();
    for cluster in &snapshot.config.clusters {
        let Some(runtime) = snapshot.runtime(&cluster.name) else {
            continue;
        };
        for state in &runtime.replicas {
            out.push(ProbeTarget::new(
                state.clone(),
                cluster.health.clone(),
                cluster.scrape.clone(),
                cluster.flavour,
            ));
        }
    }
    out
}

fn transition_label(t: &Transition) -> &'static str {
    match t {
        Transition::Up { .. } => "up",
        Transition::Down { .. } => "down",
        Transition::Ejected { .. } => "ejected",
    }
}

impl HealthService {
    /// A prober that follows `state`'s snapshots.
    pub fn new(state: &Arc<AppState>) -> HealthService {
        let hook: crate::fleet::probe::TransitionHook = Arc::new(|replica, transition| {
            crate::metrics::REPLICA_TRANSITIONS
                .with_label_values(&[replica.cluster(), transition_label(transition)])
                .inc();
        });
        let prober = Arc::new(Prober::new().with_transition_hook(hook));
        let follower = prober.clone();
        state.on_swap(Box::new(move |snapshot| {
            follower.set_targets(targets(snapshot))
        }));
        HealthService {
            prober,
            state: state.clone(),
        }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    /// Ready once every replica was probed: the proxy service depends on this one, so it
    /// starts accepting only then (connections wait in the listen backlog meanwhile) instead of
    /// answering 503 because no replica has passed a check yet — at start, and on a binary
    /// upgrade, where the old process keeps accepting in the meantime.
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        self.prober.probe_once_all().await;
        self.state
            .probed_once
            .store(true, std::sync::atomic::Ordering::Release);
        ready_notifier.notify_ready();
        self.prober.run(shutdown).await;
    }
}
