#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use super::*;
use crate::fleet::view::LoadView;

fn view(id: &str, cluster: &str, state: ViewState, in_flight: usize, waiting: f64) -> ReplicaView {
    ReplicaView {
        id: id.into(),
        cluster: cluster.into(),
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        healthy: state == ViewState::Healthy,
        eligible: state == ViewState::Healthy,
        state,
        in_flight,
        last_error: None,
        load: Some(LoadView {
            waiting: Some(waiting),
            running: None,
            kv_usage: None,
            age_ms: 0,
        }),
        ewma_ms: None,
        ejections: 0,
    }
}

fn counters(rows: &[(&str, &str, u64, u64)], tokens: &[(&str, u64)]) -> Counters {
    Counters {
        requests: rows
            .iter()
            .map(|(m, c, requests, errors)| {
                (
                    (m.to_string(), c.to_string()),
                    RequestCount {
                        requests: *requests,
                        errors: *errors,
                    },
                )
            })
            .collect(),
        tokens: tokens.iter().map(|(m, t)| (m.to_string(), *t)).collect(),
    }
}

#[test]
fn rates_per_cluster_and_model() {
    let before = counters(&[("m1", "a", 10, 0), ("m2", "b", 5, 1)], &[("m1", 100)]);
    let now = counters(
        &[("m1", "a", 30, 2), ("m2", "b", 5, 1), ("m1", "-", 4, 4)],
        &[("m1", 500), ("m2", 40)],
    );
    let views = vec![
        view("a/1", "a", ViewState::Healthy, 3, 2.0),
        view("a/2", "a", ViewState::Unhealthy, 0, 0.0),
        view("b/1", "b", ViewState::Healthy, 1, 0.5),
    ];
    let s = summarize(&before, &now, 2.0, views);
    assert_eq!(s.total.requests_per_s, 12.0);
    assert_eq!(s.total.errors_per_s, 3.0);
    assert_eq!(s.total.tokens_per_s, 220.0);
    assert_eq!(s.models["m1"].requests_per_s, 12.0);
    assert_eq!(s.models["m1"].tokens_per_s, 200.0);
    assert_eq!(s.models["m2"].tokens_per_s, 20.0);
    assert_eq!(s.clusters["a"].requests_per_s, 10.0);
    assert_eq!(s.clusters["a"].errors_per_s, 1.0);
    assert!(!s.clusters.contains_key("-"));
    assert_eq!((s.clusters["a"].healthy, s.clusters["a"].replicas), (1, 2));
    assert_eq!(s.clusters["a"].in_flight, 3);
    assert_eq!(s.in_flight, 4);
    assert_eq!(s.queue, 2.5);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["requests_per_s"], 12.0);
    assert_eq!(json["replicas"][1]["state"], "unhealthy");
}

#[test]
fn health_changes_after_the_first_view() {
    let mut watch = HealthWatch::default();
    let up = [view("a/1", "a", ViewState::Healthy, 0, 0.0)];
    assert!(watch.changes(&up).is_empty());
    assert!(watch.changes(&up).is_empty());
    let down = [
        view("a/1", "a", ViewState::Unhealthy, 0, 0.0),
        view("a/2", "a", ViewState::Starting, 0, 0.0),
    ];
    let changes = watch.changes(&down);
    assert_eq!(changes.len(), 2);
    assert_eq!(
        (changes[0].from, changes[0].to),
        (Some(ViewState::Healthy), ViewState::Unhealthy)
    );
    assert_eq!(
        (changes[1].from, changes[1].to),
        (None, ViewState::Starting)
    );
    assert!(watch.changes(&down).is_empty());
}
