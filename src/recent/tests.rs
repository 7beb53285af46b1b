#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn entry(n: u64, key: &str, model: &str, status: u16, time: &str) -> Entry {
    Entry {
        time: time.to_string(),
        request_id: format!("r{n}"),
        client_request_id: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        endpoint: "chat_completions",
        key: key.into(),
        model: model.into(),
        cluster: "c".into(),
        replica: "-".into(),
        status,
        stream: false,
        prompt_tokens: n,
        completion_tokens: 0,
        usage_source: "none",
        truncated: false,
        ttft_ms: None,
        duration_ms: 1.0,
        bytes_in: 0,
        bytes_out: 0,
        retries: 0,
        error: None,
        tags: vec![],
        rules: vec![],
        rate_limit_class: None,
        priority: None,
    }
}

fn ids(hits: &[Arc<Entry>]) -> Vec<String> {
    hits.iter().map(|e| e.request_id.clone()).collect()
}

fn all(limit: usize) -> Filter {
    Filter::parse(Some(&format!("limit={limit}")), 100_000).unwrap()
}

#[test]
fn keeps_the_newest_capacity_entries_newest_first() {
    for capacity in [1, 5, 16, 17, 100, 1000] {
        let ring = RecentRequests::new(capacity);
        for n in 0..(capacity as u64 * 3 + 7) {
            ring.push(entry(n, "k", "m", 200, "t"));
        }
        let hits = ring.query(&all(100_000));
        assert_eq!(hits.len(), capacity, "capacity {capacity}");
        let total = capacity as u64 * 3 + 7;
        let want: Vec<String> = (total - capacity as u64..total)
            .rev()
            .map(|n| format!("r{n}"))
            .collect();
        assert_eq!(ids(&hits), want);
    }
}

#[test]
fn limit_and_filters_select() {
    let ring = RecentRequests::new(100);
    ring.push(entry(0, "alice", "m1", 200, "2026-01-01T00:00:00.000Z"));
    ring.push(entry(1, "bob", "m1", 429, "2026-01-01T00:00:01.000Z"));
    ring.push(entry(2, "alice", "m2", 503, "2026-01-01T00:00:02.000Z"));
    ring.push(entry(3, "alice", "m1", 200, "2026-01-01T00:00:03.000Z"));
    let q = |s: &str| ids(&ring.query(&Filter::parse(Some(s), 100).unwrap()));
    assert_eq!(q("limit=2"), ["r3", "r2"]);
    assert_eq!(q("key=alice"), ["r3", "r2", "r0"]);
    assert_eq!(q("key=alice&model=m1"), ["r3", "r0"]);
    assert_eq!(q("status=429"), ["r1"]);
    assert_eq!(q("status=5xx"), ["r2"]);
    assert_eq!(q("status=2XX&limit=1"), ["r3"]);
    assert_eq!(q("since=2026-01-01T00:00:02Z"), ["r3", "r2"]);
    assert_eq!(q("since=2026-01-01T00%3A00%3A01.5Z"), ["r3", "r2"]);
    assert_eq!(q("key=nobody"), Vec::<String>::new());
}

#[test]
fn bad_parameters_name_themselves() {
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("status=6xx", "status"),
        ("status=99", "status"),
        ("status=0200", "status"),
        ("status=abc", "status"),
        ("since=yesterday", "since"),
        ("key=", "key"),
        ("model=a&model=b", "model"),
        ("prompt=x", "prompt"),
    ] {
        let err = Filter::parse(Some(query), 100).expect_err(query);
        assert_eq!(err.param, param, "{query}: {err}");
    }
    assert_eq!(Filter::parse(None, 1000).unwrap().limit, DEFAULT_LIMIT);
    assert_eq!(Filter::parse(None, 10).unwrap().limit, 10);
}

#[test]
fn shrinking_capacity_bounds_queries_at_once() {
    let ring = RecentRequests::new(100);
    for n in 0..100 {
        ring.push(entry(n, "k", "m", 200, "t"));
    }
    ring.set_capacity(10);
    assert_eq!(ring.query(&all(100)).len(), 10);
    ring.push(entry(100, "k", "m", 200, "t"));
    assert_eq!(ids(&ring.query(&all(1))), ["r100"]);
}

/// Push cost per thread count: with 2 threads pushing at once a push should cost about what
/// it costs alone (no lock convoy). Printed (`cargo test --lib recent -- --nocapture`); the
/// bound is generous: it only catches a lock that serializes the threads badly.
fn per_push(threads: u64, per_thread: u64) -> (f64, f64) {
    let ring = Arc::new(RecentRequests::new(1000));
    let template = entry(0, "key", "model", 200, "2026-01-01T00:00:00.000Z");
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let ring = ring.clone();
            let template = template.clone();
            std::thread::spawn(move || {
                let mut clones = Duration::ZERO;
                for _ in 0..per_thread {
                    let t = Instant::now();
                    let e = template.clone();
                    clones += t.elapsed();
                    ring.push(e);
                }
                clones
            })
        })
        .collect();
    let clone_time: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(ring.query(&all(1000)).len(), 1000);
    let pushes = (threads * per_thread) as f64;
    // Thread-seconds per push, and of that the time to build the entry.
    (
        elapsed * threads as f64 / pushes,
        clone_time.as_secs_f64() / pushes,
    )
}

#[test]
fn concurrent_pushes_stay_cheap() {
    let (alone, build_alone) = per_push(1, 40_000);
    let (two, build_two) = per_push(2, 20_000);
    println!(
        "recent ring: {:.0} ns per push alone ({:.0} ns of it building the entry), {:.0} ns per \
         push with 2 threads (the cores here) at once ({:.0} ns building)",
        alone * 1e9,
        build_alone * 1e9,
        two * 1e9,
        build_two * 1e9
    );
    assert!(two < 50e-6, "{two} s per push");
}
