//! Tests of the health state machine.

use super::*;

fn rules(k: u32, m: u32, n: u32) -> HealthRules {
    HealthRules {
        active_checks: true,
        unhealthy_after: k,
        healthy_after: m,
        passive: PassiveSettings {
            failures: n,
            ..PassiveSettings::default()
        },
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn starts_unhealthy_and_first_pass_admits() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(2, 3, 3));
    assert_eq!(h.active(), ActiveState::Starting);
    assert!(!h.is_available(t));
    assert_eq!(
        h.on_probe(true, t),
        Some(Transition::Up {
            from: ActiveState::Starting
        })
    );
    assert!(h.is_available(t));
}

#[test]
fn booting_replica_stays_starting_until_its_first_pass() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(2, 3, 3));
    for _ in 0..10 {
        assert_eq!(h.on_probe(false, t), None);
    }
    assert_eq!(h.active(), ActiveState::Starting);
    assert!(!h.is_available(t));
    assert_eq!(h.ejections(), 0, "never admitted, so never ejected");
    assert_eq!(
        h.on_probe(true, t),
        Some(Transition::Up {
            from: ActiveState::Starting
        })
    );
}

#[test]
fn k_failures_eject_m_successes_admit() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(3, 2, 3));
    h.on_probe(true, t);
    assert_eq!(h.on_probe(false, t), None);
    assert_eq!(h.on_probe(false, t), None);
    assert!(h.is_available(t));
    assert_eq!(
        h.on_probe(false, t),
        Some(Transition::Down {
            from: ActiveState::Healthy
        })
    );
    assert!(!h.is_available(t));
    assert_eq!(h.on_probe(false, t), None, "already down");
    assert_eq!(h.on_probe(true, t), None);
    assert_eq!(h.on_probe(false, t), None, "streak broken");
    assert_eq!(h.on_probe(true, t), None);
    assert_eq!(
        h.on_probe(true, t),
        Some(Transition::Up {
            from: ActiveState::Unhealthy
        })
    );
    assert!(h.is_available(t));
    assert_eq!(h.ejections(), 1);
}

#[test]
fn failure_streak_is_broken_by_success() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(2, 2, 3));
    h.on_probe(true, t);
    h.on_probe(false, t);
    h.on_probe(true, t);
    assert_eq!(h.on_probe(false, t), None);
    assert!(h.is_available(t));
}

#[test]
fn passive_ejection_grows_and_expires_into_probation() {
    let t0 = Instant::now();
    let mut h = HealthCore::new(HealthRules {
        active_checks: false,
        ..rules(1, 1, 2)
    });
    assert!(h.is_available(t0), "no checker: trusted from the start");
    let (kind, tr) = h.on_request_outcome(Outcome::ConnectFailed, t0);
    assert_eq!((kind, tr), (Some(ErrorKind::ConnectFailed), None));
    let (_, tr) = h.on_request_outcome(Outcome::Upstream5xx, t0);
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(5) }));
    assert!(!h.is_available(t0 + secs(4)));
    // Late failures of requests already in flight change nothing.
    assert_eq!(h.on_request_outcome(Outcome::Timeout, t0).1, None);
    // Cool-down over: half-open, eligible again.
    let t1 = t0 + secs(5);
    assert!(h.is_available(t1));
    assert_eq!(h.passive(t1), PassiveState::Probation);
    // One failure in probation re-ejects at once, for twice as long.
    let (_, tr) = h.on_request_outcome(Outcome::ConnectFailed, t1);
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(10) }));
    let t2 = t1 + secs(10);
    let (_, tr) = h.on_request_outcome(Outcome::ConnectFailed, t2);
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(20) }));
    // A success in probation closes the breaker.
    let t3 = t2 + secs(20);
    h.on_request_outcome(Outcome::Ok, t3);
    assert_eq!(h.passive(t3), PassiveState::Closed);
    assert_eq!(h.ejections(), 3);
}

#[test]
fn cooldown_is_capped_and_resets_after_calm() {
    let p = PassiveSettings::default();
    assert_eq!(cooldown_for(&p, 0), secs(5));
    assert_eq!(cooldown_for(&p, 3), secs(40));
    assert_eq!(cooldown_for(&p, 6), secs(300));
    assert_eq!(cooldown_for(&p, 40), secs(300));

    let t0 = Instant::now();
    let mut h = HealthCore::new(HealthRules {
        active_checks: false,
        ..rules(1, 1, 1)
    });
    h.on_request_outcome(Outcome::ConnectFailed, t0);
    let t1 = t0 + secs(5);
    h.on_request_outcome(Outcome::Ok, t1);
    // Failing again soon after: the cool-down keeps growing.
    let (_, tr) = h.on_request_outcome(Outcome::ConnectFailed, t1 + secs(10));
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(10) }));
    let t2 = t1 + secs(20);
    h.on_request_outcome(Outcome::Ok, t2);
    // After a calm minute, back to the base cool-down.
    let (_, tr) = h.on_request_outcome(Outcome::ConnectFailed, t2 + secs(61));
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(5) }));
}

#[test]
fn local_resource_errors_are_told_apart() {
    let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
    assert!(is_local_resource_error(&emfile));
    let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
    assert!(!is_local_resource_error(&refused));
    assert!(!is_local_resource_error(&std::io::Error::other("x")));
}

#[test]
fn passing_probes_do_not_cut_a_passive_ejection_short() {
    let t0 = Instant::now();
    let mut h = HealthCore::new(rules(1, 2, 1));
    h.on_probe(true, t0);
    let (_, tr) = h.on_request_outcome(Outcome::Upstream5xx, t0);
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(5) }));
    for s in 1..5 {
        assert_eq!(h.on_probe(true, t0 + secs(s)), None);
        assert!(!h.is_available(t0 + secs(s)), "probe readmitted at {s} s");
    }
    assert!(h.is_available(t0 + secs(5)));
    // On probation: the next failure ejects again, longer.
    let (_, tr) = h.on_request_outcome(Outcome::Upstream5xx, t0 + secs(6));
    assert_eq!(tr, Some(Transition::Ejected { cooldown: secs(10) }));
    // Seen dead by probes and back (a restart): the ejection ends with the readmission.
    let down = h.on_probe(false, t0 + secs(7));
    assert!(matches!(down, Some(Transition::Down { .. })));
    assert_eq!(h.on_probe(true, t0 + secs(8)), None);
    let up = h.on_probe(true, t0 + secs(8));
    assert!(matches!(up, Some(Transition::Up { .. })));
    assert!(h.is_available(t0 + secs(8)));
}

#[test]
fn ok_and_neutral_outcomes_do_not_eject() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(1, 1, 2));
    h.on_probe(true, t);
    for _ in 0..10 {
        h.on_request_outcome(Outcome::ConnectFailed, t);
        h.on_request_outcome(Outcome::Ok, t);
        h.on_request_outcome(Outcome::Neutral, t);
    }
    assert!(h.is_available(t));
    assert_eq!(Outcome::from_status(404), Outcome::Ok);
    assert_eq!(Outcome::from_status(503), Outcome::Upstream5xx);
    assert_eq!(Outcome::from_status(501), Outcome::Ok);
}

#[test]
fn passive_disabled_never_ejects() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(1, 1, 0));
    h.on_probe(true, t);
    for _ in 0..100 {
        assert_eq!(h.on_request_outcome(Outcome::ConnectFailed, t).1, None);
    }
    assert!(h.is_available(t));
}

#[test]
fn disabling_active_checks_on_reload_admits() {
    let t = Instant::now();
    let mut h = HealthCore::new(rules(1, 1, 1));
    assert!(!h.is_available(t));
    h.set_rules(HealthRules {
        active_checks: false,
        ..rules(1, 1, 1)
    });
    assert!(h.is_available(t));
}
