use super::*;
use proptest::prelude::*;

const SEC: Duration = Duration::from_secs(1);

fn shared(instances: u32) -> Arc<LeaseShared> {
    let s = LeaseShared::new(LeaseParams::default());
    s.set_instances(instances);
    s
}

fn sync(b: &mut LeasedBucket, store: &mut StoreBucket, now: Instant, t0: Instant) {
    let op = b.plan(now);
    let ms = now.duration_since(t0).as_millis() as u64;
    let grant = store.exchange(op, ms);
    b.apply(grant);
}

#[test]
fn cold_bucket_admits_one_lease_on_credit_then_waits_for_the_store() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(3), 60, Duration::from_secs(60), t0);
    assert_eq!(b.max_lease(), 1, "5 % of 60 / 3");
    assert!(b.try_take(1, t0).is_ok(), "the first request never waits");
    assert!(b.try_take(1, t0).is_err(), "the credit is one lease");
    assert_eq!(
        b.try_take(1, t0),
        Err(Refusal::RetryAfter(Duration::from_millis(100)))
    );
    let mut store = StoreBucket::new(60, 60_000, 0);
    sync(&mut b, &mut store, t0, t0);
    // The credit was charged (1) and a lease of 1 granted: 58 left in the store.
    assert_eq!(store.tokens, 58.0);
    assert!(b.try_take(1, t0).is_ok());
    assert!(b.try_take(1, t0).is_err());
}

#[test]
fn amounts_over_capacity_are_refused_for_good() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(1), 100, SEC, t0);
    assert_eq!(b.try_take(101, t0), Err(Refusal::ExceedsCapacity));
}

#[test]
fn idle_bucket_returns_its_lease() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(1), 1_000, Duration::from_secs(60), t0);
    let mut store = StoreBucket::new(1_000, 60_000, 0);
    b.try_take(10, t0).unwrap();
    for i in 1..5 {
        let now = t0 + Duration::from_millis(100 * i);
        sync(&mut b, &mut store, now, t0);
        b.try_take(10, now).unwrap();
    }
    assert!(b.balance() > 0);
    let later = t0 + Duration::from_secs(10);
    let op = b.plan(later);
    assert_eq!(op.want, 0);
    assert!(op.give > 0);
    assert_eq!(b.balance(), 0);
    b.abandon(op);
    assert_eq!(b.balance(), op.give, "a failed return keeps the tokens");
}

#[test]
fn excess_is_charged_as_debt() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(1), 1_000, Duration::from_secs(60), t0);
    b.try_take(100, t0).unwrap();
    b.adjust(-400, t0); // used 500 of a 100 reservation
    let op = b.plan(t0);
    assert_eq!(op.give, -500);
    let mut store = StoreBucket::new(1_000, 60_000, 0);
    let grant = store.exchange(op, 0);
    assert_eq!(grant.remaining, 500 - grant.granted);
}

#[test]
fn store_down_spends_the_lease_then_the_local_share() {
    let t0 = Instant::now();
    let s = shared(3);
    let mut b = LeasedBucket::new(s.clone(), 60, Duration::from_secs(60), t0);
    let mut store = StoreBucket::new(60, 60_000, 0);
    sync(&mut b, &mut store, t0, t0); // lease 1, store 59
    s.set_store_down(true);
    assert!(b.try_take(1, t0).is_ok(), "the lease first");
    // Then 59 / 3 → 20 of the local share of 20.
    for _ in 0..20 {
        assert!(b.try_take(1, t0).is_ok());
    }
    assert!(b.try_take(1, t0).is_err());
    s.set_store_down(false);
    let op = b.plan(t0 + SEC);
    assert_eq!(op.give, -20, "the outage's use is charged as debt");
}

#[test]
fn fail_open_and_fail_closed() {
    let t0 = Instant::now();
    for (mode, admits) in [(DownMode::FailOpen, true), (DownMode::FailClosed, false)] {
        let s = LeaseShared::new(LeaseParams {
            down_mode: mode,
            ..LeaseParams::default()
        });
        s.set_store_down(true);
        let mut b = LeasedBucket::new(s, 10, SEC, t0);
        for _ in 0..100 {
            assert_eq!(b.try_take(1, t0).is_ok(), admits);
        }
    }
}

#[test]
fn refusal_numbers_add_up() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(3), 60, Duration::from_secs(60), t0);
    b.try_take(1, t0).unwrap();
    assert!(b.try_take(1, t0).is_err());
    assert!(b.used_for_refusal(1, t0) + 1 > 60);
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Take(usize, u64),
    Charge(usize, u64),
    Plan(usize),
    Apply(usize),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..400).prop_map(Op::Advance),
        4 => (0..n, 1u64..40).prop_map(|(i, a)| Op::Take(i, a)),
        1 => (0..n, 1u64..40).prop_map(|(i, a)| Op::Charge(i, a)),
        2 => (0..n).prop_map(Op::Plan),
        2 => (0..n).prop_map(Op::Apply),
    ]
}

proptest! {
    /// N instances lease from one store bucket with exchanges in flight while they spend.
    /// Over every window ending in an admission, the tokens admitted never exceed
    /// C + r·t + N·(L + B), the README's bound (metered excess E comes on top; it is charged
    /// as debt and only delays later admissions).
    #[test]
    fn fleet_never_over_admits(
        cap in 1u64..400,
        n in 1usize..5,
        ops in proptest::collection::vec(op(4), 1..300),
    ) {
        let t0 = Instant::now();
        let period_ms = 10_000u64;
        let s = shared(n as u32);
        let mut store = StoreBucket::new(cap, period_ms, 0);
        let mut fleet: Vec<LeasedBucket> = (0..n)
            .map(|_| LeasedBucket::new(s.clone(), cap, Duration::from_millis(period_ms), t0))
            .collect();
        let mut pending: Vec<Option<Grant>> = vec![None; n];
        let mut unsettled = vec![0u64; n];
        let mut t_ms = 0u64;
        let mut largest = 0u64;
        // (time ms, tokens, admission?, unsettled charges at that moment)
        let mut events: Vec<(u64, u64, bool, u64)> = Vec::new();
        for o in &ops {
            let now = t0 + Duration::from_millis(t_ms);
            match *o {
                Op::Advance(ms) => t_ms += ms,
                Op::Take(i, a) => {
                    let i = i % n;
                    if fleet[i].try_take(a, now).is_ok() {
                        largest = largest.max(a);
                        events.push((t_ms, a, true, unsettled.iter().sum()));
                    } else {
                        largest = largest.max(a.min(cap));
                    }
                }
                Op::Charge(i, a) => {
                    let i = i % n;
                    fleet[i].adjust(-(a as i64), now);
                    unsettled[i] += a;
                    events.push((t_ms, a, false, unsettled.iter().sum()));
                }
                Op::Plan(i) => {
                    let i = i % n;
                    if pending[i].is_none() {
                        let op = fleet[i].plan(now);
                        unsettled[i] = 0;
                        pending[i] = Some(store.exchange(op, t_ms));
                    }
                }
                Op::Apply(i) => {
                    let i = i % n;
                    if let Some(g) = pending[i].take() {
                        fleet[i].apply(g);
                    }
                }
            }
        }
        let l = fleet[0].max_lease();
        let slack = n as u128 * 2 * u128::from(l.max(largest));
        for i in 0..events.len() {
            let mut sum = 0u128;
            for &(t, a, admission, _) in &events[i..] {
                if !admission {
                    continue;
                }
                sum += u128::from(a);
                let elapsed = u128::from(t - events[i].0);
                let bound = u128::from(cap) * (u128::from(period_ms) + elapsed)
                    + (slack + 1) * u128::from(period_ms);
                prop_assert!(
                    sum * u128::from(period_ms) <= bound,
                    "{sum} tokens in {elapsed} ms, cap {cap}, {n} instances, slack {slack}"
                );
            }
        }
    }
}

#[test]
fn a_key_refused_for_long_keeps_asking_for_the_refill() {
    let t0 = Instant::now();
    let mut b = LeasedBucket::new(shared(3), 60, Duration::from_secs(60), t0);
    let mut store = StoreBucket::new(60, 60_000, 0);
    store.tokens = 0.0;
    let mut admitted = 0;
    for tick in 1..=100u64 {
        let now = t0 + Duration::from_millis(100 * tick);
        sync(&mut b, &mut store, now, t0);
        if b.try_take(1, now).is_ok() {
            admitted += 1;
        }
    }
    // 10 s at one per second, after the credit.
    assert!((9..=11).contains(&admitted), "admitted {admitted}");
}
