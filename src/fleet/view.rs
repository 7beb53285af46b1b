//! What `GET /admin/replicas` shows about one replica: a plain serializable snapshot.

use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use super::health::{ActiveState, ErrorKind, PassiveState};
use super::replica::ReplicaState;

/// One word for the replica's situation, most operator-relevant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewState {
    /// Taken out by an operator (in-flight requests finish).
    Draining,
    /// Passively ejected, cool-down running.
    Ejected,
    /// Never passed a probe.
    Starting,
    /// Failing probes.
    Unhealthy,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorView {
    pub kind: ErrorKind,
    pub seconds_ago: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadView {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_usage: Option<f64>,
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaView {
    pub id: String,
    pub cluster: String,
    pub addr: SocketAddr,
    /// Passing probes and not passively ejected (independent of draining).
    pub healthy: bool,
    /// Would get new requests now.
    pub eligible: bool,
    pub state: ViewState,
    pub in_flight: usize,
    pub last_error: Option<ErrorView>,
    /// The latest sample, however old (`age_ms` tells).
    pub load: Option<LoadView>,
    pub ewma_ms: Option<f64>,
    pub ejections: u64,
}

impl ReplicaView {
    pub fn of(r: &ReplicaState, now: Instant) -> ReplicaView {
        let health = r.health();
        let healthy = health.is_available(now);
        let draining = r.is_draining();
        let state = if draining {
            ViewState::Draining
        } else if let PassiveState::Ejected { .. } = health.passive(now) {
            ViewState::Ejected
        } else {
            match health.active() {
                ActiveState::Starting => ViewState::Starting,
                ActiveState::Unhealthy => ViewState::Unhealthy,
                ActiveState::Healthy => ViewState::Healthy,
            }
        };
        ReplicaView {
            id: r.id().to_string(),
            cluster: r.cluster().to_string(),
            addr: r.addr(),
            healthy,
            eligible: healthy && !draining,
            state,
            in_flight: r.in_flight(),
            last_error: r.last_error().map(|e| ErrorView {
                kind: e.kind,
                seconds_ago: round_ms(now.saturating_duration_since(e.at).as_secs_f64()),
            }),
            load: r.latest_load().map(|l| LoadView {
                waiting: l.sample.waiting,
                running: l.sample.running,
                kv_usage: l.sample.kv_usage,
                age_ms: u64::try_from(now.saturating_duration_since(l.sample.at).as_millis())
                    .unwrap_or(u64::MAX),
            }),
            ewma_ms: r.ewma_ms().map(round_ms),
            ejections: health.ejections(),
        }
    }
}

/// Three decimals are plenty for a human and keep the JSON short.
fn round_ms(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::health::{HealthRules, Outcome};
    use crate::fleet::replica::LoadSample;
    use std::time::Duration;

    #[test]
    fn view_serializes() {
        let t = Instant::now();
        let r = std::sync::Arc::new(ReplicaState::new(
            "gpu",
            SocketAddr::from(([127, 0, 0, 1], 8001)),
            HealthRules::default(),
        ));
        let v = ReplicaView::of(&r, t);
        assert_eq!(v.state, ViewState::Starting);
        assert!(!v.healthy);
        r.on_probe(true, t);
        r.on_request_outcome(Outcome::ConnectFailed, t);
        r.record_latency(Duration::from_millis(250));
        r.set_load(LoadSample {
            waiting: Some(1.0),
            running: None,
            kv_usage: Some(0.5),
            at: t,
        });
        let _g = r.begin();
        let v = ReplicaView::of(&r, t + Duration::from_millis(1500));
        let json = serde_json::to_value(&v).unwrap_or_default();
        assert_eq!(json["id"], "gpu/127.0.0.1:8001");
        assert_eq!(json["state"], "healthy");
        assert_eq!(json["in_flight"], 1);
        assert_eq!(json["last_error"]["kind"], "connect_failed");
        assert_eq!(json["last_error"]["seconds_ago"], 1.5);
        assert_eq!(json["load"]["age_ms"], 1500);
        assert_eq!(json["load"]["running"], serde_json::Value::Null);
        assert_eq!(json["ewma_ms"], 250.0);
        r.set_draining(true);
        let v = ReplicaView::of(&r, t);
        assert_eq!(
            (v.state, v.healthy, v.eligible),
            (ViewState::Draining, true, false)
        );
    }
}
