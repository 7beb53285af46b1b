//! Selection tests: invariants, a queueing simulation comparing policies, prefix affinity.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::fleet::hash::prefix_key;
use crate::fleet::health::{HealthRules, Outcome};
use crate::fleet::replica::{InFlight, LoadSample};

/// `n` replicas that need no probe to be eligible.
fn replicas(n: usize) -> Vec<Arc<ReplicaState>> {
    let rules = HealthRules {
        active_checks: false,
        ..HealthRules::default()
    };
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000));
            Arc::new(ReplicaState::new("c", addr, rules.clone()))
        })
        .collect()
}

fn balancer(policy: Policy) -> Balancer {
    Balancer::new(BalanceSettings {
        policy,
        ..BalanceSettings::default()
    })
}

const ALL: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::LeastOutstanding,
    Policy::LoadAware,
    Policy::PrefixAffinity,
    Policy::Scored,
];

#[test]
fn round_robin_is_fair() {
    let rs = replicas(3);
    let b = balancer(Policy::RoundRobin);
    let now = Instant::now();
    let mut counts = [0; 3];
    for k in 0..300 {
        let i = b.select(&rs, &SelectCtx::new(now, k)).unwrap_or(99);
        counts[i] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
}

#[test]
fn errors_say_why() {
    let now = Instant::now();
    let b = balancer(Policy::LeastOutstanding);
    assert_eq!(
        b.select(&[], &SelectCtx::new(now, 0)),
        Err(SelectError::NoReplicas)
    );
    let rs = replicas(2);
    for r in &rs {
        r.set_draining(true);
    }
    assert_eq!(
        b.select(&rs, &SelectCtx::new(now, 0)),
        Err(SelectError::NoEligible { total: 2 })
    );
    rs[0].set_draining(false);
    let ctx = SelectCtx {
        tried: &[0],
        ..SelectCtx::new(now, 0)
    };
    assert_eq!(b.select(&rs, &ctx), Err(SelectError::Exhausted));
}

#[test]
fn retry_never_returns_the_last_replica() {
    let rs = replicas(3);
    let now = Instant::now();
    for policy in ALL {
        let b = balancer(policy);
        for k in 0..200u64 {
            let last = (k % 3) as usize;
            let ctx = SelectCtx {
                last: Some(last),
                prefix_key: Some(k / 3),
                ..SelectCtx::new(now, k)
            };
            assert_ne!(b.select(&rs, &ctx), Ok(last), "{policy}");
        }
    }
}

#[test]
fn passively_ejected_replica_gets_nothing() {
    let rs = replicas(3);
    let now = Instant::now();
    for _ in 0..3 {
        rs[1].on_request_outcome(Outcome::ConnectFailed, now);
    }
    for policy in ALL {
        let b = balancer(policy);
        for k in 0..100 {
            let ctx = SelectCtx {
                prefix_key: Some(k),
                ..SelectCtx::new(now, k)
            };
            assert_ne!(b.select(&rs, &ctx), Ok(1), "{policy}");
        }
    }
    // After the cool-down it is eligible again.
    let later = now + Duration::from_secs(5);
    let b = balancer(Policy::RoundRobin);
    let picks: Vec<_> = (0..3)
        .map(|k| b.select(&rs, &SelectCtx::new(later, k)))
        .collect();
    assert!(picks.contains(&Ok(1)));
}

proptest! {
    /// Whatever the states, a selection is eligible, untried and not the last replica, and
    /// an error only comes when no such replica exists.
    #[test]
    fn never_returns_tried_or_ineligible(
        n in 1usize..7,
        unhealthy in proptest::collection::vec(any::<bool>(), 7),
        draining in proptest::collection::vec(any::<bool>(), 7),
        tried in proptest::collection::vec(0usize..8, 0..4),
        last in proptest::option::of(0usize..7),
        loads in proptest::collection::vec(0usize..5, 7),
        policy in 0usize..5,
        rand in any::<u64>(),
        key in proptest::option::of(any::<u64>()),
        max_in_flight in proptest::option::of(1usize..5),
        max_queue in proptest::option::of(1usize..5),
    ) {
        let rs = replicas(n);
        let now = Instant::now();
        let mut guards: Vec<InFlight> = Vec::new();
        for (i, r) in rs.iter().enumerate() {
            if unhealthy[i] {
                r.on_request_outcome(Outcome::ConnectFailed, now);
                r.on_request_outcome(Outcome::ConnectFailed, now);
                r.on_request_outcome(Outcome::ConnectFailed, now);
            }
            r.set_draining(draining[i]);
            for _ in 0..loads[i] {
                guards.push(r.begin());
            }
            r.set_load(LoadSample { waiting: Some(loads[i] as f64), running: None, kv_usage: None, at: now });
        }
        let b = Balancer::new(BalanceSettings {
            policy: ALL[policy],
            max_in_flight,
            max_queue: max_queue.map(|q| q as f64),
            ..BalanceSettings::default()
        });
        let ctx = SelectCtx { tried: &tried, last, prefix_key: key, prefix_blocks: &[], now, rand };
        let allowed: Vec<usize> = (0..n)
            .filter(|&i| rs[i].is_eligible(now) && !tried.contains(&i) && last != Some(i))
            .collect();
        let open: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&i| !is_saturated(&b.settings, &rs[i], now))
            .collect();
        match b.select(&rs, &ctx) {
            Ok(i) => prop_assert!(open.contains(&i)),
            Err(SelectError::Saturated { .. }) => {
                prop_assert!(!allowed.is_empty() && open.is_empty())
            }
            Err(_) => prop_assert!(allowed.is_empty()),
        }
    }
}

#[test]
fn saturated_when_every_replica_is_over_a_limit() {
    let now = Instant::now();
    let rs = replicas(3);
    let b = Balancer::new(BalanceSettings {
        max_in_flight: Some(2),
        ..BalanceSettings::default()
    });
    let mut guards = Vec::new();
    for r in &rs[..2] {
        guards.push(r.begin());
        guards.push(r.begin());
    }
    // One still has room: it gets the request.
    assert_eq!(b.select(&rs, &SelectCtx::new(now, 1)), Ok(2));
    guards.push(rs[2].begin());
    guards.push(rs[2].begin());
    assert_eq!(
        b.select(&rs, &SelectCtx::new(now, 1)),
        Err(SelectError::Saturated {
            retry_after: Duration::from_secs(1)
        })
    );

    // Queue threshold on scraped `waiting`; stale samples do not count.
    let rs = replicas(2);
    let b = Balancer::new(BalanceSettings {
        max_queue: Some(4.0),
        policy: Policy::LoadAware,
        ..BalanceSettings::default()
    });
    for r in &rs {
        r.set_load(LoadSample {
            waiting: Some(4.0),
            running: Some(10.0),
            kv_usage: Some(0.9),
            at: now,
        });
    }
    assert!(matches!(
        b.select(&rs, &SelectCtx::new(now, 0)),
        Err(SelectError::Saturated { .. })
    ));
    let later = now + Duration::from_secs(7);
    assert!(b.select(&rs, &SelectCtx::new(later, 0)).is_ok());
}

#[test]
fn load_score_prefers_no_queue_then_low_kv() {
    let now = Instant::now();
    let rs = replicas(3);
    let s = BalanceSettings::default();
    let sample = |waiting, running, kv| LoadSample {
        waiting: Some(waiting),
        running: Some(running),
        kv_usage: Some(kv),
        at: now,
    };
    rs[0].set_load(sample(2.0, 3.0, 0.2));
    rs[1].set_load(sample(0.0, 12.0, 0.9));
    rs[2].set_load(sample(0.0, 12.0, 0.3));
    let b = balancer(Policy::LoadAware);
    for k in 0..10 {
        assert_eq!(b.select(&rs, &SelectCtx::new(now, k)), Ok(2));
    }
    // The proxy's own sends since the scrape count at once.
    let guards: Vec<_> = (0..12).map(|_| rs[2].begin()).collect();
    assert!(load_score(&s, &rs[2], now) > load_score(&s, &rs[1], now));
    drop(guards);
    // Stale samples fall back to in-flight + latency.
    let later = now + Duration::from_secs(60);
    rs[0].record_latency(Duration::from_secs(2));
    assert_eq!(load_score(&s, &rs[0], later), 2.0);
}

/// A discrete-time queueing model: each replica runs `SLOTS` requests at once and queues
/// the rest; one replica is four times slower. Requests arrive at a fixed rate that the fleet
/// can carry only if the slow replica gets less than its round-robin third.
fn simulate(policy: Policy) -> [usize; 3] {
    const SLOTS: usize = 4;
    const SERVICE: [u64; 3] = [4, 4, 16];
    const TICKS: u64 = 4000;
    const SCRAPE_EVERY: u64 = 10;
    let rs = replicas(3);
    let b = balancer(policy);
    let base = Instant::now();
    let mut queues: Vec<VecDeque<(u64, InFlight)>> = (0..3).map(|_| VecDeque::new()).collect();
    let mut running: Vec<Vec<(u64, u64, InFlight)>> = (0..3).map(|_| Vec::new()).collect();
    let mut counts = [0usize; 3];
    let mut seq = 0u64;
    for tick in 0..TICKS {
        let now = base + Duration::from_millis(tick);
        for r in 0..3 {
            // Finish, then start queued work in freed slots.
            running[r].retain(|(end, arrived, _)| {
                if *end <= tick {
                    rs[r].record_latency(Duration::from_millis(tick - arrived));
                    false
                } else {
                    true
                }
            });
            while running[r].len() < SLOTS {
                let Some((arrived, g)) = queues[r].pop_front() else {
                    break;
                };
                running[r].push((tick + SERVICE[r], arrived, g));
            }
            if tick % SCRAPE_EVERY == 0 {
                rs[r].set_load(LoadSample {
                    waiting: Some(queues[r].len() as f64),
                    running: Some(running[r].len() as f64),
                    kv_usage: Some(running[r].len() as f64 / SLOTS as f64),
                    at: now,
                });
            }
        }
        // 1.5 requests per tick; capacity is 1 + 1 + 0.25.
        for _ in 0..(1 + tick % 2) {
            seq += 1;
            let ctx = SelectCtx {
                prefix_key: Some(seq),
                ..SelectCtx::new(now, mix64(seq))
            };
            let Ok(r) = b.select(&rs, &ctx) else {
                panic!("no replica for {policy}");
            };
            counts[r] += 1;
            let g = rs[r].begin();
            if running[r].len() < SLOTS {
                running[r].push((tick + SERVICE[r], tick, g));
            } else {
                queues[r].push_back((tick, g));
            }
        }
    }
    counts
}

#[test]
fn load_sensitive_policies_spare_the_slow_replica() {
    let share = |c: [usize; 3]| c[2] as f64 / c.iter().sum::<usize>() as f64;
    let rr = simulate(Policy::RoundRobin);
    let lo = simulate(Policy::LeastOutstanding);
    let la = simulate(Policy::LoadAware);
    eprintln!("round-robin {rr:?}, least-outstanding {lo:?}, load-aware {la:?}");
    assert!((share(rr) - 1.0 / 3.0).abs() < 0.01, "{rr:?}");
    for (name, c) in [("least-outstanding", lo), ("load-aware", la)] {
        assert!(
            share(c) < share(rr) - 0.1,
            "{name} gave the slow replica {c:?}"
        );
        assert!(c[2] < c[0] && c[2] < c[1], "{name}: {c:?}");
    }
}

#[test]
fn prefix_affinity_sticks_to_one_replica() {
    let rs = replicas(3);
    let b = balancer(Policy::PrefixAffinity);
    let now = Instant::now();
    let hot = prefix_key(b"You are a helpful assistant.\nuser: hi");
    let mut counts = [0usize; 3];
    // The hot prefix is a tenth of the traffic, the rest is spread over other prefixes, and
    // the last 30 requests are in flight at any time (so bounded load is in play).
    let mut held: VecDeque<InFlight> = VecDeque::new();
    for k in 0..10_000u64 {
        let key = if k % 10 == 0 { hot } else { mix64(k) };
        let ctx = SelectCtx {
            prefix_key: Some(key),
            ..SelectCtx::new(now, k)
        };
        let Ok(i) = b.select(&rs, &ctx) else {
            panic!("no replica");
        };
        if key == hot {
            counts[i] += 1;
        }
        held.push_back(rs[i].begin());
        if held.len() > 30 {
            held.pop_front();
        }
    }
    let top = counts.iter().copied().max().unwrap_or(0);
    assert!(top >= 950, "{counts:?}");
}

#[test]
fn distinct_prefixes_spread_over_all_replicas() {
    let rs = replicas(3);
    let b = balancer(Policy::PrefixAffinity);
    let now = Instant::now();
    let mut counts = [0usize; 3];
    for k in 0..1000u64 {
        let key = prefix_key(format!("system prompt #{k}").as_bytes());
        let ctx = SelectCtx {
            prefix_key: Some(key),
            ..SelectCtx::new(now, k)
        };
        if let Ok(i) = b.select(&rs, &ctx) {
            counts[i] += 1;
        }
    }
    for c in counts {
        assert!((200..=470).contains(&c), "{counts:?}");
    }
}

#[test]
fn bounded_load_falls_back_to_the_next_in_hash_order() {
    let rs = replicas(3);
    let b = balancer(Policy::PrefixAffinity);
    let now = Instant::now();
    let key = prefix_key(b"session-42");
    let ctx = SelectCtx {
        prefix_key: Some(key),
        ..SelectCtx::new(now, 0)
    };
    let home = b.select(&rs, &ctx).unwrap_or(99);
    let second = b
        .select(
            &rs,
            &SelectCtx {
                tried: &[home],
                ..ctx
            },
        )
        .unwrap_or(99);
    assert_ne!(home, second);
    // Under the bound the home replica keeps its prefix even with some load.
    let mut guards: Vec<_> = (0..2).map(|_| rs[home].begin()).collect();
    guards.push(rs[second].begin());
    assert_eq!(b.select(&rs, &ctx), Ok(home));
    // Load home far beyond 1.5 × the average + 1: the next in hash order takes over.
    guards.extend((0..10).map(|_| rs[home].begin()));
    assert_eq!(b.select(&rs, &ctx), Ok(second));
    guards.clear();
    assert_eq!(b.select(&rs, &ctx), Ok(home));
}

#[test]
fn least_outstanding_prefers_the_idle_of_two() {
    let rs = replicas(2);
    let b = balancer(Policy::LeastOutstanding);
    let now = Instant::now();
    let _g: Vec<_> = (0..3).map(|_| rs[0].begin()).collect();
    for k in 0..20 {
        assert_eq!(b.select(&rs, &SelectCtx::new(now, k)), Ok(1));
    }
}

fn fresh(waiting: f64, kv: f64, now: Instant) -> LoadSample {
    LoadSample {
        waiting: Some(waiting),
        running: Some(0.0),
        kv_usage: Some(kv),
        at: now,
    }
}

#[test]
fn scored_sends_a_repeated_prefix_to_the_replica_that_has_it() {
    let now = Instant::now();
    let rs = replicas(3);
    for r in &rs {
        r.set_load(fresh(0.0, 0.1, now));
    }
    let b = balancer(Policy::Scored);
    let blocks = crate::fleet::prefix::block_hashes(&[b'p'; 2048]);
    let ctx = SelectCtx {
        prefix_blocks: &blocks,
        ..SelectCtx::new(now, 7)
    };
    let first = b.select(&rs, &ctx).unwrap();
    for k in 0..50 {
        let again = b.select(&rs, &SelectCtx { rand: k, ..ctx }).unwrap();
        assert_eq!(again, first, "the replica that saw the prefix keeps it");
    }
    // A different prompt is free to go anywhere: with equal loads every replica is picked.
    let mut seen = [false; 3];
    for k in 0..30u64 {
        let other =
            crate::fleet::prefix::block_hashes(format!("{k}-{}", "x".repeat(256)).as_bytes());
        let ctx = SelectCtx {
            prefix_blocks: &other,
            ..SelectCtx::new(now, k)
        };
        seen[balancer(Policy::Scored).select(&rs, &ctx).unwrap()] = true;
    }
    assert!(seen.iter().filter(|s| **s).count() >= 2, "{seen:?}");
}

#[test]
fn scored_avoids_a_queued_replica_even_with_its_prefix() {
    let now = Instant::now();
    let rs = replicas(3);
    let blocks = crate::fleet::prefix::block_hashes(&[b'q'; 1024]);
    rs[0].remember_prefix(&blocks);
    rs[0].set_load(fresh(12.0, 1.0, now));
    rs[1].set_load(fresh(0.0, 0.3, now));
    rs[2].set_load(fresh(1.0, 0.5, now));
    let b = balancer(Policy::Scored);
    let ctx = SelectCtx {
        prefix_blocks: &blocks,
        ..SelectCtx::new(now, 0)
    };
    // rs[0]: 2·0 + 2·0 + 3·1 = 3; rs[1]: 2·1 + 2·0.7 = 3.4; rs[2]: 2·(11/12) + 2·0.5 ≈ 2.8.
    assert_eq!(b.select(&rs, &ctx), Ok(1));
    // Queues equal: the prefix wins over a lower KV use.
    let rs = replicas(2);
    rs[0].remember_prefix(&blocks);
    rs[0].set_load(fresh(0.0, 0.6, now));
    rs[1].set_load(fresh(0.0, 0.3, now));
    assert_eq!(b.select(&rs, &ctx), Ok(0));
}

#[test]
fn scored_bounds_the_load_of_a_hot_prefix() {
    let now = Instant::now();
    let rs = replicas(3);
    let b = balancer(Policy::Scored);
    let blocks = crate::fleet::prefix::block_hashes(&[b'h'; 4096]);
    let mut guards = Vec::new();
    let mut counts = [0usize; 3];
    for k in 0..60 {
        let ctx = SelectCtx {
            prefix_blocks: &blocks,
            ..SelectCtx::new(now, k)
        };
        let i = b.select(&rs, &ctx).unwrap();
        counts[i] += 1;
        guards.push(rs[i].begin());
    }
    // cap = 1.5 × average + 1: no replica holds much more than half of 60 in flight.
    assert!(counts.iter().all(|&c| c <= 32), "{counts:?}");
    assert!(counts.iter().all(|&c| c >= 10), "{counts:?}");
}

#[test]
fn scored_falls_back_to_in_flight_when_samples_are_stale() {
    let start = Instant::now();
    let rs = replicas(2);
    // A stale sample claims replica 0 is idle and replica 1 is queueing.
    rs[0].set_load(fresh(0.0, 0.0, start));
    rs[1].set_load(fresh(50.0, 1.0, start));
    let _busy: Vec<InFlight> = (0..3).map(|_| rs[0].begin()).collect();
    let b = balancer(Policy::Scored);
    let later = start + Duration::from_secs(60);
    assert_eq!(b.select(&rs, &SelectCtx::new(later, 0)), Ok(1));
    assert_eq!(
        b.select(&rs, &SelectCtx::new(start, 0)),
        Ok(0),
        "fresh: trusted"
    );
}
