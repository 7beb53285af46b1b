//! What the event stream says once a second, computed from two samples of the cumulative
//! counters (plain data, no metrics types), and the replica health changes between two views.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::fleet::{ReplicaView, ViewState};

/// Requests answered so far for one (model, cluster): all, and the 4xx/5xx ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCount {
    pub requests: u64,
    pub errors: u64,
}

/// The cumulative counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// (model alias, cluster) → counts.
    pub requests: BTreeMap<(String, String), RequestCount>,
    /// Model alias → tokens metered (prompt + completion).
    pub tokens: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    pub errors_per_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterSummary {
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub in_flight: usize,
    /// Requests waiting in the replicas' own queues (their last scraped `waiting`).
    pub queue: f64,
    pub healthy: usize,
    pub replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub interval_s: f64,
    #[serde(flatten)]
    pub total: Rates,
    pub in_flight: usize,
    pub queue: f64,
    pub clusters: BTreeMap<String, ClusterSummary>,
    pub models: BTreeMap<String, Rates>,
    pub replicas: Vec<ReplicaView>,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

/// The rates between `before` and `now` (`secs` apart) and the replicas' current state.
pub fn summarize(before: &Counters, now: &Counters, secs: f64, views: Vec<ReplicaView>) -> Summary {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let mut clusters: BTreeMap<String, ClusterSummary> = BTreeMap::new();
    let mut models: BTreeMap<String, Rates> = BTreeMap::new();
    let mut total = Rates::default();
    for (labels @ (model, cluster), count) in &now.requests {
        let old = before.requests.get(labels).copied().unwrap_or_default();
        let requests = rate(count.requests, old.requests, secs);
        let errors = rate(count.errors, old.errors, secs);
        total.requests_per_s += requests;
        total.errors_per_s += errors;
        let m = models.entry(model.clone()).or_default();
        m.requests_per_s += requests;
        m.errors_per_s += errors;
        // `-`: answered before a route was chosen (bad key, unknown model, ...).
        if cluster != "-" {
            let c = clusters.entry(cluster.clone()).or_default();
            c.requests_per_s += requests;
            c.errors_per_s += errors;
        }
    }
    for (model, tokens) in &now.tokens {
        let t = rate(
            *tokens,
            before.tokens.get(model).copied().unwrap_or(0),
            secs,
        );
        models.entry(model.clone()).or_default().tokens_per_s += t;
        total.tokens_per_s += t;
    }
    for v in &views {
        let c = clusters.entry(v.cluster.clone()).or_default();
        c.replicas += 1;
        c.healthy += usize::from(v.healthy);
        c.in_flight += v.in_flight;
        c.queue += v.load.as_ref().and_then(|l| l.waiting).unwrap_or(0.0);
    }
    Summary {
        interval_s: secs,
        in_flight: clusters.values().map(|c| c.in_flight).sum(),
        queue: clusters.values().map(|c| c.queue).sum(),
        total,
        clusters,
        models,
        replicas: views,
    }
}

/// One replica whose state changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthChange {
    pub replica: String,
    pub cluster: String,
    /// `None`: a replica not seen before (added by a reload).
    pub from: Option<ViewState>,
    pub to: ViewState,
    pub healthy: bool,
    pub last_error: Option<crate::fleet::view::ErrorView>,
}

/// Remembers each replica's last state to report changes.
#[derive(Debug, Default)]
pub struct HealthWatch {
    last: BTreeMap<String, ViewState>,
    primed: bool,
}

impl HealthWatch {
    /// The changes since the previous call (none on the first).
    pub fn changes(&mut self, views: &[ReplicaView]) -> Vec<HealthChange> {
        let mut out = Vec::new();
        let mut next = BTreeMap::new();
        for v in views {
            let from = self.last.get(&v.id).copied();
            if self.primed && from != Some(v.state) {
                out.push(HealthChange {
                    replica: v.id.clone(),
                    cluster: v.cluster.clone(),
                    from,
                    to: v.state,
                    healthy: v.healthy,
                    last_error: v.last_error.clone(),
                });
            }
            next.insert(v.id.clone(), v.state);
        }
        self.last = next;
        self.primed = true;
        out
    }
}

#[cfg(test)]
mod tests;
