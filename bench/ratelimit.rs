//! Hot-path cost of API keys and rate limits: `cargo bench --bench ratelimit`.
//!
//! 10 000 keys, each with every key limit set (high enough never to refuse, so every request
//! takes the full admit path), one model limit and global limits. Reports ns per
//! `authenticate + admit + settle` (median of several rounds, keys visited round robin), and
//! the two halves alone. Not a test: no assertion on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench fails loudly

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokengate::auth::{generate_secret, KeyRegistry};
use tokengate::ratelimit::{AdmissionRequest, GlobalLimits, Limiter, ModelLimits};

const KEYS: usize = 10_000;
const OPS: usize = 200_000;
const ROUNDS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Writes a keys file directly (creating 10 000 keys through the registry would rewrite the
/// file 10 000 times) and returns the secrets.
fn keys_file(path: &std::path::Path) -> Vec<String> {
    let mut text = String::new();
    let mut secrets = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let s = generate_secret().expect("OS random number generator");
        text.push_str(&format!(
            "[[keys]]\nname = \"key-{i}\"\nhash = \"{}\"\nprefix = \"{}\"\n\
             [keys.limits]\nrequests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\n\
             tokens_per_day = 1000000000000\nmax_concurrent = 64\n\n",
            s.hash, s.prefix
        ));
        secrets.push(s.secret);
    }
    std::fs::write(path, text).expect("write keys file");
    secrets
}

fn run(label: &str, threads: usize, op: impl Fn(usize) + Sync) {
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let op = &op;
                s.spawn(move || {
                    for i in 0..OPS / threads {
                        op(i * threads + t);
                    }
                });
            }
        });
        times.push(start.elapsed());
    }
    let t = median(times);
    println!(
        "| {label} | {threads} | {:.0} ns | {:.2} M/s |",
        t.as_nanos() as f64 * threads as f64 / OPS as f64,
        OPS as f64 / t.as_secs_f64() / 1e6
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tokengate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("keys.toml");
    let secrets = keys_file(&path);
    let load_start = Instant::now();
    let registry = KeyRegistry::load(&path).expect("keys file");
    println!(
        "{KEYS} keys loaded in {:.1} ms; {OPS} requests per round, median of {ROUNDS}; \
         ns per request (per thread)\n",
        load_start.elapsed().as_secs_f64() * 1e3
    );
    let limiter = Arc::new(Limiter::new());
    let model_limits = ModelLimits {
        tokens_per_minute: Some(1_000_000_000_000),
        max_concurrent: Some(100_000),
    };
    let global_limits = GlobalLimits {
        requests_per_minute: Some(1_000_000_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        max_concurrent: Some(100_000),
    };
    let now_unix = tokengate::auth::now_unix();

    println!("| case | threads | per request | throughput |\n|---|---|---|---|");
    run("authenticate (SHA-256 + lookup)", 1, |i| {
        let key = registry.authenticate(Some(&secrets[i % KEYS]), now_unix);
        black_box(key.is_ok());
    });
    let names: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let key_limits = registry.get("key-0").expect("key-0").limits;
    run("admit + settle", 1, |i| {
        let now = Instant::now();
        let req = AdmissionRequest {
            key_name: &names[i % KEYS],
            key_limits: &key_limits,
            model: "llama-3.1-8b",
            model_limits: &model_limits,
            global_limits: &global_limits,
            estimated_tokens: 600,
        };
        let r = limiter.admit(&req, now).expect("never refused");
        black_box(r.headers());
        r.settle(450, now);
    });
    for threads in [1, 2] {
        run("authenticate + admit + settle", threads, |i| {
            let now = Instant::now();
            let key = registry
                .authenticate(Some(&secrets[i % KEYS]), now_unix)
                .expect("known key");
            let req = AdmissionRequest {
                key_name: &key.name,
                key_limits: &key.limits,
                model: "llama-3.1-8b",
                model_limits: &model_limits,
                global_limits: &global_limits,
                estimated_tokens: 600,
            };
            let r = limiter.admit(&req, now).expect("never refused");
            black_box(r.headers());
            r.settle(450, now);
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
