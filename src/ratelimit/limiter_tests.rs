use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn key(rpm: Option<u64>, tpm: Option<u64>, tpd: Option<u64>, conc: Option<u32>) -> KeyLimits {
    KeyLimits {
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        tokens_per_day: tpd,
        max_concurrent: conc,
    }
}

const NO_MODEL: ModelLimits = ModelLimits {
    tokens_per_minute: None,
    max_concurrent: None,
};
const NO_GLOBAL: GlobalLimits = GlobalLimits {
    requests_per_minute: None,
    tokens_per_minute: None,
    max_concurrent: None,
};

fn req<'a>(name: &'a str, limits: &'a KeyLimits, tokens: u64) -> AdmissionRequest<'a> {
    AdmissionRequest {
        key_name: name,
        key_limits: limits,
        model: "llama",
        model_limits: &NO_MODEL,
        global_limits: &NO_GLOBAL,
        estimated_tokens: tokens,
    }
}

#[test]
fn burst_of_200_threads_admits_exactly_60_then_one_per_second() {
    let limiter = Arc::new(Limiter::new());
    let limits = key(Some(60), None, None, None);
    let now = Instant::now();
    let barrier = Arc::new(Barrier::new(200));
    let admitted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let (limiter, barrier, admitted) = (limiter.clone(), barrier.clone(), admitted.clone());
            thread::spawn(move || {
                barrier.wait();
                if let Ok(r) = limiter.admit(&req("ci-bot", &limits, 10), now) {
                    admitted.fetch_add(1, Ordering::SeqCst);
                    r.settle(10, now);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 60);
    let refused = limiter.admit(&req("ci-bot", &limits, 10), now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::KeyRequestsPerMinute);
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    let later = now + Duration::from_secs(1);
    let one = limiter.admit(&req("ci-bot", &limits, 10), later);
    assert!(one.is_ok());
    assert!(limiter.admit(&req("ci-bot", &limits, 10), later).is_err());
    // Another key is unaffected.
    assert!(limiter.admit(&req("other", &limits, 10), later).is_ok());
}

#[test]
fn concurrency_cap_is_never_exceeded_by_1000_threads() {
    let limiter = Arc::new(Limiter::new());
    let limits = key(None, None, None, Some(10));
    let barrier = Arc::new(Barrier::new(1000));
    let current = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..1000)
        .map(|_| {
            let (limiter, barrier) = (limiter.clone(), barrier.clone());
            let (current, peak, admitted) = (current.clone(), peak.clone(), admitted.clone());
            thread::spawn(move || {
                barrier.wait();
                let now = Instant::now();
                if let Ok(r) = limiter.admit(&req("k", &limits, 1), now) {
                    let n = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    admitted.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    current.fetch_sub(1, Ordering::SeqCst);
                    r.settle(1, now);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 10);
    assert!(admitted.load(Ordering::SeqCst) >= 10);
    assert_eq!(limiter.in_flight_key("k"), 0, "every slot released");
    assert_eq!(limiter.in_flight_total(), 0);
}

#[test]
fn concurrency_slot_is_released_on_drop_and_refusal_says_so() {
    let limiter = Limiter::new();
    let limits = key(None, None, None, Some(1));
    let now = Instant::now();
    let first = limiter.admit(&req("ci-bot", &limits, 1), now).unwrap();
    let refused = limiter.admit(&req("ci-bot", &limits, 1), now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::KeyConcurrency);
    assert_eq!(refused.retry_after, CONCURRENCY_RETRY_AFTER);
    assert_eq!(
        refused.message,
        "Concurrency limit reached for key `ci-bot`: 1 of 1 concurrent requests \
         (max_concurrent) already in flight. Please try again in 1s."
    );
    assert_eq!(refused.headers.retry_after, Some(CONCURRENCY_RETRY_AFTER));
    drop(first); // e.g. the client disconnected
    assert!(limiter.admit(&req("ci-bot", &limits, 1), now).is_ok());
}

#[test]
fn settle_refunds_or_charges_the_difference() {
    let limiter = Limiter::new();
    let limits = key(None, Some(1_000), Some(100_000), None);
    let now = Instant::now();
    let r = limiter.admit(&req("k", &limits, 800), now).unwrap();
    assert_eq!(r.reserved_tokens(), 800);
    assert_eq!(r.headers().tokens.unwrap().remaining, 200);
    r.settle(300, now); // refund 500
    let r = limiter.admit(&req("k", &limits, 700), now).unwrap();
    assert_eq!(r.headers().tokens.unwrap().remaining, 0);
    r.settle(1_200, now); // charge 500 more: TPM bucket at -500
    let refused = limiter.admit(&req("k", &limits, 1), now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::KeyTokensPerMinute);
    assert!(!refused.too_large);
    // 501 tokens at 1000/min.
    assert_eq!(refused.retry_after, Duration::from_millis(30_060));
    assert_eq!(
        refused.message,
        "Rate limit reached for key `k` on tokens per minute (TPM): limit 1000, used 1500, \
         requested 1. Please try again in 30.06s."
    );
    assert_eq!(refused.headers.tokens.unwrap().remaining, 0);
    assert_eq!(
        refused.headers.requests, None,
        "no RPM limit, no requests headers"
    );
    // The day bucket saw 300 + 1200.
    let later = now + Duration::from_secs(60);
    let r = limiter.admit(&req("k", &limits, 0), later).unwrap();
    drop(r);
}

#[test]
fn dropping_without_settle_charges_the_estimate() {
    let limiter = Limiter::new();
    let limits = key(None, Some(1_000), None, None);
    let now = Instant::now();
    drop(limiter.admit(&req("k", &limits, 600), now).unwrap());
    let refused = limiter.admit(&req("k", &limits, 600), now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::KeyTokensPerMinute);
}

#[test]
fn too_large_request_is_distinguished() {
    let limiter = Limiter::new();
    let limits = key(Some(60), Some(10_000), None, None);
    let now = Instant::now();
    let refused = limiter
        .admit(&req("ci-bot", &limits, 12_000), now)
        .unwrap_err();
    assert!(refused.too_large);
    assert_eq!(refused.limit, LimitKind::KeyTokensPerMinute);
    assert_eq!(refused.retry_after, Duration::ZERO);
    assert_eq!(refused.headers.retry_after, None);
    assert!(
        refused.message.starts_with(
            "Request too large for key `ci-bot` on tokens per minute (TPM): limit 10000, \
             requested 12000."
        ),
        "{}",
        refused.message
    );
    // Nothing was consumed by the refusal.
    let h = refused.headers;
    assert_eq!(h.requests.unwrap().remaining, 60);
    assert_eq!(h.tokens.unwrap().remaining, 10_000);
}

#[test]
fn openai_style_retry_message() {
    let limiter = Limiter::new();
    let limits = key(None, Some(10_000), None, None);
    let now = Instant::now();
    limiter
        .admit(&req("ci-bot", &limits, 9_000), now)
        .unwrap()
        .settle(9_000, now);
    let later = now + Duration::from_millis(5_000 - 596);
    // Level: 1000 + 10000·4.404/60 = 1734; needs 2000: 266 more = 1.596 s.
    let refused = limiter
        .admit(&req("ci-bot", &limits, 2_000), later)
        .unwrap_err();
    assert_eq!(
        refused.message,
        "Rate limit reached for key `ci-bot` on tokens per minute (TPM): limit 10000, used \
         8266, requested 2000. Please try again in 1.596s."
    );
    assert_eq!(refused.error_type(), "tokens");
    let pairs = refused.headers.pairs();
    assert!(
        pairs.contains(&("retry-after", "2".to_string())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("retry-after-ms", "1596".to_string())),
        "{pairs:?}"
    );
}

#[test]
fn a_later_scope_refusing_gives_back_what_earlier_ones_took() {
    let limiter = Limiter::new();
    let limits = key(Some(10), Some(1_000), Some(5_000), Some(5));
    let model = ModelLimits {
        tokens_per_minute: Some(100),
        max_concurrent: None,
    };
    let now = Instant::now();
    let r = AdmissionRequest {
        model_limits: &model,
        ..req("k", &limits, 500)
    };
    let refused = limiter.admit(&r, now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::ModelTokensPerMinute);
    assert!(refused.too_large);
    assert!(
        refused.message.contains("model `llama`"),
        "{}",
        refused.message
    );
    assert_eq!(limiter.in_flight_key("k"), 0);
    let h = refused.headers;
    assert_eq!(h.requests.unwrap().remaining, 10);
    assert_eq!(h.tokens.unwrap().remaining, 1_000);

    let global = GlobalLimits {
        requests_per_minute: Some(1),
        tokens_per_minute: None,
        max_concurrent: None,
    };
    let g = AdmissionRequest {
        global_limits: &global,
        ..req("k", &limits, 10)
    };
    let _held = limiter.admit(&g, now).unwrap();
    let refused = limiter.admit(&g, now).unwrap_err();
    assert_eq!(refused.limit, LimitKind::GlobalRequestsPerMinute);
    assert!(
        refused.message.contains("this gateway"),
        "{}",
        refused.message
    );
    // Key buckets: one request and 10 tokens taken by the admitted request only.
    assert_eq!(refused.headers.requests.unwrap().remaining, 9);
    assert_eq!(refused.headers.tokens.unwrap().remaining, 990);
    assert_eq!(limiter.in_flight_key("k"), 1);
    assert_eq!(limiter.in_flight_model("llama"), 1);
}

#[test]
fn model_and_global_concurrency_caps() {
    let limiter = Limiter::new();
    let none = KeyLimits::default();
    let model = ModelLimits {
        tokens_per_minute: None,
        max_concurrent: Some(1),
    };
    let global = GlobalLimits {
        max_concurrent: Some(2),
        ..NO_GLOBAL
    };
    let now = Instant::now();
    let mk = |key: &'static str, m: &'static str| AdmissionRequest {
        model: m,
        model_limits: &model,
        global_limits: &global,
        ..req(key, &none, 1)
    };
    let _a = limiter.admit(&mk("a", "m1"), now).unwrap();
    let e = limiter.admit(&mk("b", "m1"), now).unwrap_err();
    assert_eq!(e.limit, LimitKind::ModelConcurrency);
    assert_eq!(e.headers.requests, None);
    let _b = limiter.admit(&mk("b", "m2"), now).unwrap();
    let e = limiter.admit(&mk("c", "m3"), now).unwrap_err();
    assert_eq!(e.limit, LimitKind::GlobalConcurrency);
    assert!(e.message.contains("this gateway"));
    assert_eq!(
        limiter.in_flight_key("c"),
        0,
        "the key's slot was given back"
    );
    assert_eq!(
        limiter.in_flight_model("m3"),
        0,
        "the model's slot was given back"
    );
}

#[test]
fn limit_change_keeps_consumption() {
    let limiter = Limiter::new();
    let now = Instant::now();
    let small = key(Some(10), Some(1_000), None, None);
    for _ in 0..4 {
        limiter
            .admit(&req("k", &small, 100), now)
            .unwrap()
            .settle(100, now);
    }
    // Raised by a key update: the 4 requests and 400 tokens stay consumed.
    let big = key(Some(20), Some(2_000), None, None);
    let r = limiter.admit(&req("k", &big, 100), now).unwrap();
    assert_eq!(r.headers().requests.unwrap().remaining, 15);
    assert_eq!(r.headers().tokens.unwrap().remaining, 1_500);
    drop(r);
    // Lowered: clamped to the new capacity, never reset to a fresh burst above it.
    let tiny = key(Some(3), Some(300), None, None);
    let r = limiter.admit(&req("k", &tiny, 100), now).unwrap();
    assert_eq!(r.headers().requests.unwrap().remaining, 2);
    assert_eq!(r.headers().tokens.unwrap().remaining, 200);
    drop(r);
    // Removed and restored: the bucket is kept, not refilled.
    drop(
        limiter
            .admit(&req("k", &KeyLimits::default(), 0), now)
            .unwrap(),
    );
    let r = limiter.admit(&req("k", &tiny, 100), now).unwrap();
    assert_eq!(r.headers().requests.unwrap().remaining, 1);
}

#[test]
fn headers_follow_the_key_buckets() {
    let limiter = Limiter::new();
    let limits = key(Some(60), Some(10_000), Some(1_000_000), None);
    let now = Instant::now();
    let r = limiter.admit(&req("k", &limits, 1_000), now).unwrap();
    let h = r.headers().clone();
    assert_eq!(
        h.requests,
        Some(WindowState {
            limit: 60,
            remaining: 59,
            reset: Duration::from_secs(1)
        })
    );
    assert_eq!(
        h.tokens,
        Some(WindowState {
            limit: 10_000,
            remaining: 9_000,
            reset: Duration::from_secs(6)
        })
    );
    assert_eq!(h.retry_after, None);
    assert_eq!(h.pairs().len(), 6);
}

#[test]
fn day_limit_refuses_after_the_minute_one_refills() {
    let limiter = Limiter::new();
    let limits = key(None, Some(1_000), Some(1_500), None);
    let now = Instant::now();
    limiter
        .admit(&req("k", &limits, 1_000), now)
        .unwrap()
        .settle(1_000, now);
    let later = now + Duration::from_secs(60);
    let e = limiter.admit(&req("k", &limits, 1_000), later).unwrap_err();
    assert_eq!(e.limit, LimitKind::KeyTokensPerDay);
    assert!(e.message.contains("tokens per day (TPD)"), "{}", e.message);
}

#[test]
fn forgotten_key_starts_fresh_and_in_flight_reservations_survive() {
    let limiter = Limiter::new();
    let limits = key(Some(1), None, None, Some(1));
    let now = Instant::now();
    let held = limiter.admit(&req("k", &limits, 0), now).unwrap();
    limiter.forget_key("k");
    assert!(limiter.admit(&req("k", &limits, 0), now).is_ok());
    held.settle(0, now);
}

#[test]
fn the_key_part_is_taken_before_the_body_and_completed_once() {
    let limiter = Limiter::new();
    let now = Instant::now();
    let limits = key(Some(2), Some(1_000), None, Some(1));
    let ticket = limiter.admit_key(&req("k", &limits, 0), now).expect("slot");
    assert_eq!(limiter.in_flight_key("k"), 1);
    // The slot is held from the headers on: a second request is refused at once.
    let refused = limiter
        .admit_key(&req("k", &limits, 0), now)
        .expect_err("one at a time");
    assert_eq!(refused.limit.as_str(), "key_concurrency");
    let reservation = limiter
        .admit_after(ticket, &req("k", &limits, 100), now)
        .expect("admitted");
    assert_eq!(limiter.in_flight_key("k"), 1, "one slot, not two");
    drop(reservation);
    assert_eq!(limiter.in_flight_key("k"), 0);
    // One request each: the early one counted once; the second of rpm = 2, then refused.
    let second = limiter
        .admit_key(&req("k", &limits, 0), now)
        .expect("second");
    drop(second);
    assert_eq!(
        limiter.in_flight_key("k"),
        0,
        "an unused ticket frees its slot"
    );
    let third = limiter
        .admit_key(&req("k", &limits, 0), now)
        .expect_err("rpm = 2");
    assert_eq!(third.limit.as_str(), "key_requests_per_minute");
}
