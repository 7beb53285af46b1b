//! Seeded mutation fuzzer for tokengate's parsers (issue #13, item 7).
//!
//! cargo-fuzz needs a nightly toolchain and `cargo install cargo-fuzz`, which CI does not have;
//! this generator needs neither. Every input is derived from `(seed, target, index)` alone, so a
//! failure is reproduced with `--seed S --target T --from I --iterations 1`.
//!
//! ```text
//! cargo run --release --bin tokengate-fuzz -- --iterations 1000000          # every target
//! cargo run --release --bin tokengate-fuzz -- --target body --seed 7 --iterations 10000
//! ```
//!
//! Targets: `body` (request scanner + byte-exact rewrite), `sse` (streaming meter),
//! `json` (non-streaming meter), `rules` (rule files), `config` (the main TOML config).
//! Seeds come from `tests/corpus`, `conf/`, `lua-free-rules/` (read relative to the current
//! directory or `--root`) plus a few built-in request bodies. Exit status 1 on any panic or
//! broken invariant; each is printed with the exact arguments that reproduce it.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokengate::metering::{MeterConfig, ResponseMeter, StreamProtocol};
use tokengate::routing::body::{BodyScan, RewritePlan};
use tokengate::rules::{KnownNames, RuleSource};

const TARGETS: [&str; 5] = ["body", "sse", "json", "rules", "config"];

/// Tokens that steer mutations towards the parsers' interesting states.
const DICTIONARY: &[&[u8]] = &[
    b"\"model\"",
    b"\"stream\"",
    b"\"stream_options\"",
    b"\"include_usage\"",
    b"\"max_tokens\"",
    b"\"n\"",
    b"true",
    b"false",
    b"null",
    b"\"5\"",
    b"4e3",
    b"-0",
    b"1e999",
    b"\"\\u0000\"",
    b"\"mod\\u0065l\"",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"data: [DONE]\n\n",
    b"event: error\n",
    b": keep-alive\n\n",
    b"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}",
    b"\"choices\":[]",
    b"\"error\":{\"message\":\"x\",\"code\":500}",
    b"[[rules]]\n",
    b"[server]\n",
    b"[[clusters]]\n",
    b"[[models]]\n",
    b"when = { field = \"body.n\", gt = 1 }\n",
    b"actions = [{ clamp = \"max_tokens\", max = 1 }]\n",
    b"name = \"x\"\n",
    b"=",
    b"'",
    b"\"\"\"",
    b"\xff\xfe",
    b"\xe2\x82",
];

const BUILTIN_BODIES: &[&str] = &[
    r#"{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hi"}]}"#,
    r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    r#"{"model":"m","stream":true,"stream_options":{},"max_tokens":16,"n":2}"#,
    r#"{"model":"m","prompt":["a","b"],"max_completion_tokens":4,"temperature":0.5}"#,
    r#"{"model":"m","input":"x","user":"u","tools":[{"type":"function"}]}"#,
    r#" { "mod\u0065l" : "m" , "stream" : false , "stream_options" : { "continuous_usage_stats" : true } } "#,
];

struct Options {
    seed: u64,
    iterations: u64,
    from: u64,
    targets: Vec<String>,
    root: PathBuf,
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\nusage: tokengate-fuzz [--target body|sse|json|rules|config] [--seed N] [--iterations N] [--from I] [--root DIR]");
            std::process::exit(2);
        }
    };
    // Panics are counted and reported below, not printed by the default hook per input.
    panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in &options.targets {
        let seeds = seeds_for(target, &options.root);
        let report = run_target(target, &seeds, &options);
        println!(
            "target={target} seeds={} inputs={} panics={} invariant_failures={} accepted={} seconds={:.1}",
            seeds.len(),
            report.inputs,
            report.panics,
            report.broken,
            report.accepted,
            report.seconds
        );
        for (index, what) in report.failures.iter().take(10) {
            println!(
                "  FAIL {what}: reproduce with --target {target} --seed {} --from {index} --iterations 1",
                options.seed
            );
        }
        failed |= report.panics > 0 || report.broken > 0;
    }
    std::process::exit(i32::from(failed));
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        seed: 1,
        iterations: 10_000,
        from: 0,
        targets: TARGETS.iter().map(|t| t.to_string()).collect(),
        root: PathBuf::from("."),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--seed" => options.seed = number()?,
            "--iterations" => options.iterations = number()?,
            "--from" => options.from = number()?,
            "--root" => options.root = PathBuf::from(&value),
            "--target" if TARGETS.contains(&value.as_str()) => options.targets = vec![value],
            _ => return Err(format!("unknown argument {flag} {value}")),
        }
    }
    Ok(options)
}

#[derive(Default)]
struct Report {
    inputs: u64,
    panics: u64,
    broken: u64,
    accepted: u64,
    seconds: f64,
    failures: Vec<(u64, String)>,
}

fn run_target(target: &str, seeds: &[Vec<u8>], options: &Options) -> Report {
    let mut report = Report::default();
    let started = Instant::now();
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    for index in options.from..options.from + options.iterations {
        let mut rng = fastrand::Rng::with_seed(
            options.seed ^ salt ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let input = mutate(&mut rng, seeds);
        let cuts = rng.u64(..);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            check(target, &input, cuts, &options.root)
        }));
        report.inputs += 1;
        match outcome {
            Ok(Ok(true)) => report.accepted += 1,
            Ok(Ok(false)) => {}
            Ok(Err(what)) => {
                report.broken += 1;
                report.failures.push((index, what));
            }
            Err(payload) => {
                report.panics += 1;
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.failures.push((index, format!("panic: {message}")));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Runs one input through `target`. `Ok(true)`: the parser accepted it; `Err`: an invariant broke.
fn check(target: &str, input: &[u8], cuts: u64, root: &Path) -> Result<bool, String> {
    match target {
        "body" => check_body(input),
        "sse" => Ok(check_meter(
            MeterConfig::sse(StreamProtocol::OpenAi, cuts & 1 == 0),
            input,
            cuts,
        )),
        "json" => Ok(check_meter(MeterConfig::json(200), input, cuts)),
        "rules" => {
            let text = String::from_utf8_lossy(input).into_owned();
            let source = RuleSource {
                path: PathBuf::from("fuzz.toml"),
                text,
            };
            let known = KnownNames::new(["vllm-a", "batch"], ["llama-3.1-8b", "mistral-7b"]);
            Ok(tokengate::rules::compile(&[source], &known).is_ok())
        }
        "config" => {
            let text = String::from_utf8_lossy(input);
            // Beside the shipped configs, so the files they name resolve (read only).
            let path = root.join("conf/fuzz.toml");
            Ok(tokengate::config::parse(&text, &path).is_ok())
        }
        _ => Err(format!("unknown target {target}")),
    }
}

/// The scanner accepts or rejects; an accepted body rewrites to valid JSON naming the new model.
fn check_body(input: &[u8]) -> Result<bool, String> {
    let Ok(scan) = BodyScan::parse(input) else {
        return Ok(false);
    };
    let stream = scan.facts().stream == Some(true);
    let plan = RewritePlan::new(&scan)
        .model("served/model")
        .ensure_stream_usage(stream)
        .set_field("max_tokens", 7);
    let out = plan.apply();
    if out.len() != plan.output_len() {
        return Err(format!("output_len {} != {}", plan.output_len(), out.len()));
    }
    let again = BodyScan::parse(&out).map_err(|e| format!("rewrite not re-parseable: {e}"))?;
    if again.facts().model != "served/model" {
        return Err("rewritten model differs".into());
    }
    if again.facts().max_tokens != Some(7) {
        return Err("max_tokens not set".into());
    }
    Ok(true)
}

/// Meter the input in pieces cut where `cuts` says; the held bytes stay bounded.
fn check_meter(config: MeterConfig, input: &[u8], mut cuts: u64) -> bool {
    let bound = config.max_event_bytes;
    let now = Instant::now();
    let mut meter = ResponseMeter::new(config, now);
    let mut rest = input;
    while !rest.is_empty() {
        let size = ((cuts % 97) as usize + 1).min(rest.len());
        cuts = cuts.rotate_left(7) ^ 0x5555;
        let (piece, tail) = rest.split_at(size);
        let _ = meter.on_body(piece, now);
        assert!(
            meter.carried_bytes() <= bound + input.len().min(bound),
            "carried bytes unbounded"
        );
        rest = tail;
    }
    let _ = meter.on_end(now);
    let record = meter.finish(now);
    !record.truncated
}

fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=8) {
        let len = data.len();
        match rng.u8(..9) {
            0 if len > 0 => data[rng.usize(..len)] ^= 1 << rng.u8(..8),
            1 if len > 0 => data[rng.usize(..len)] = rng.u8(..),
            2 => {
                let token = DICTIONARY[rng.usize(..DICTIONARY.len())];
                let at = rng.usize(..=len);
                data.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let start = rng.usize(..len);
                let end = (start + rng.usize(1..=16)).min(len);
                data.drain(start..end);
            }
            4 if len > 0 => {
                let start = rng.usize(..len);
                let end = (start + rng.usize(1..=64)).min(len);
                let copy = data[start..end].to_vec();
                let at = rng.usize(..=data.len());
                data.splice(at..at, copy);
            }
            5 => data.truncate(rng.usize(..=len)),
            6 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let from = rng.usize(..=other.len());
                data.truncate(rng.usize(..=len));
                data.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                // Digits and quotes: numbers become strings, floats, huge values.
                let at = rng.usize(..len);
                data[at] = b"0123456789.e-+\"'"[rng.usize(..16)];
            }
            _ => {}
        }
    }
    data
}

fn seeds_for(target: &str, root: &Path) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = match target {
        "body" => {
            let mut bodies: Vec<Vec<u8>> = BUILTIN_BODIES
                .iter()
                .map(|b| b.as_bytes().to_vec())
                .collect();
            // The request bodies written in the shipped rules' tests.
            for file in files_in(&root.join("lua-free-rules"), "toml") {
                let text = String::from_utf8_lossy(&file).into_owned();
                for line in text.lines() {
                    if let Some(body) = line.trim().strip_prefix("body = '") {
                        bodies.push(body.trim_end_matches('\'').as_bytes().to_vec());
                    }
                }
            }
            bodies
        }
        "sse" => files_in(&root.join("tests/corpus"), "sse")
            .into_iter()
            .chain(files_in(&root.join("tests/corpus"), "txt"))
            .collect(),
        "json" => files_in(&root.join("tests/corpus"), "json"),
        "rules" => files_in(&root.join("lua-free-rules"), "toml"),
        "config" => files_in(&root.join("conf"), "toml"),
        _ => Vec::new(),
    };
    if seeds.is_empty() {
        seeds.push(b"{}".to_vec());
    }
    seeds
}

fn files_in(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}
