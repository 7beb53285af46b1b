//! Parser/meter throughput: `cargo bench --bench metering`.
//!
//! Feeds a synthetic vLLM-style chat stream through `ResponseMeter` in fixed-size pieces, as
//! `response_body_filter` does, and reports MB/s and ns per event (median of several rounds).
//! Also the non-streaming JSON usage scanner on an embeddings-sized body. Not a test: no
//! assertion on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench fails loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use tokengate::metering::synthetic::{large_chat_stream, meter_in_pieces};
use tokengate::metering::{BodyAction, MeterConfig, ResponseMeter};

const EVENTS: usize = 20_000;
const ROUNDS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench_sse(body: &[u8], piece: usize, strip: bool) {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut completion = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let (record, sent) = meter_in_pieces(black_box(body), piece, strip, Instant::now());
        times.push(start.elapsed());
        completion = record.completion_tokens;
        black_box(sent);
    }
    let t = median(times);
    println!(
        "| SSE meter, {} KiB pieces, strip={strip} | {:.0} MB/s | {:.0} ns/event | {} completion tokens |",
        piece / 1024,
        body.len() as f64 / t.as_secs_f64() / 1e6,
        t.as_nanos() as f64 / EVENTS as f64,
        completion
    );
}

fn bench_json() {
    let mut body = String::from(r#"{"object":"list","data":["#);
    for i in 0..20_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":[0.0123,-0.4567,0.891,0.2345,-0.6789,0.1011,0.1213,-0.1415]}}"#
        ));
    }
    body.push_str(r#"],"model":"m","usage":{"prompt_tokens":40000,"total_tokens":40000}}"#);
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut meter = ResponseMeter::new(MeterConfig::json(200), Instant::now());
        for piece in body.as_bytes().chunks(16 * 1024) {
            let action = meter.on_body(piece, Instant::now());
            debug_assert!(matches!(action, BodyAction::Passthrough));
        }
        black_box(meter.finish(Instant::now()));
        times.push(start.elapsed());
    }
    let t = median(times);
    println!(
        "| JSON usage scanner, 16 KiB pieces | {:.0} MB/s | {:.1} MB body | |",
        body.len() as f64 / t.as_secs_f64() / 1e6,
        body.len() as f64 / 1e6
    );
}

fn main() {
    let body = large_chat_stream(EVENTS);
    println!(
        "stream: {EVENTS} events, {:.2} MB; median of {ROUNDS} rounds\n",
        body.len() as f64 / 1e6
    );
    println!("| case | throughput | per event | check |\n|---|---|---|---|");
    for piece in [4 * 1024, 64 * 1024] {
        for strip in [false, true] {
            bench_sse(&body, piece, strip);
        }
    }
    bench_json();
}
