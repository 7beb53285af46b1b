//! Rule evaluation cost: `cargo bench --bench rules`.
//!
//! 50 rules mixing every operator kind (string equals/in/prefix/regex, headers, tags, CIDR,
//! numeric comparisons, combinators) evaluated against a typical chat request. Two cases:
//! a request that matches a handful of rules (a clamp, a tag, a canary split) and one that
//! matches none. Prints markdown rows: ns per request and per rule, median of rounds. Not a
//! test: no assertion on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench fails loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use tokengate::rules::{compile, BodyFacts, KeyInfo, KnownNames, RuleInput, RuleSource};

const RULES: usize = 50;
const ITERATIONS: usize = 200_000;
const ROUNDS: usize = 9;

/// One of ten rule shapes, parameterised by `i` so no two rules are the same.
fn rule(i: usize) -> String {
    let (when, actions) = match i % 10 {
        0 => (
            format!(r#"{{ all = [ {{ field = "key.tags", contains = "intern-{i}" }}, {{ field = "max_tokens", gt = 512 }} ] }}"#),
            r#"[ { clamp = "max_tokens", max = 512 } ]"#.to_string(),
        ),
        1 => (
            r#"{ field = "model", in = ["mistral-7b", "text-embedding-small"] }"#.to_string(),
            format!(r#"[ {{ tag = "m{i}" }} ]"#),
        ),
        2 => (
            format!(r#"{{ field = "header.x-tokengate-cluster", equals = "eval-{i}" }}"#),
            r#"[ { route = "trtllm-b" } ]"#.to_string(),
        ),
        3 => (
            format!(r#"{{ field = "client_ip", cidr = ["10.{i}.0.0/16", "192.168.{i}.0/24", "2001:db8:{i}::/48"] }}"#),
            r#"[ { priority = 5 } ]"#.to_string(),
        ),
        4 => (
            format!(r#"{{ field = "path", regex = "^/v1/(embeddings|audio)/{i}" }}"#),
            r#"[ { rate_limit_class = "emb" } ]"#.to_string(),
        ),
        5 => (
            format!(r#"{{ any = [ {{ field = "key.team", equals = "team-{i}" }}, {{ field = "key.name", prefix = "svc-{i}-" }} ] }}"#),
            r#"[ { set = "user", value = "svc" } ]"#.to_string(),
        ),
        6 => (
            format!(r#"{{ field = "prompt_bytes", gt = {} }}"#, 1_000_000 + i),
            r#"[ { deny = { status = 413, message = "too large", code = "request_too_large" } } ]"#.to_string(),
        ),
        7 => (
            // Non-SDK clients; both bench requests come from the SDK.
            format!(r#"{{ not = {{ field = "header.user-agent", regex = "^(OpenAI|curl{i})/" }} }}"#),
            format!(r#"[ {{ tag = "ua{i}" }} ]"#),
        ),
        8 => (
            format!(r#"{{ all = [ {{ field = "stream", equals = true }}, {{ field = "temperature", gt = {}.5 }} ] }}"#, i % 3),
            r#"[ { clamp = "temperature", max = 1.0 } ]"#.to_string(),
        ),
        _ => (
            format!(r#"{{ all = [ {{ field = "model", equals = "llama-3.1-8b" }}, {{ field = "key.tags", in = ["canary-{i}", "beta"] }} ] }}"#),
            r#"[ { split = [ { cluster = "vllm-canary", weight = 10 }, { cluster = "vllm-a", weight = 90 } ] } ]"#.to_string(),
        ),
    };
    format!("[[rules]]\nname = \"rule-{i:02}\"\nwhen = {when}\nactions = {actions}\n\n")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(label: &str, set: &tokengate::rules::RuleSet, input: &RuleInput<'_>) {
    let matched = set.evaluate(input).matched.len();
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            black_box(set.evaluate(black_box(input)));
        }
        times.push(start.elapsed());
    }
    let per_request = median(times).as_nanos() as f64 / ITERATIONS as f64;
    println!(
        "| {label} | {RULES} | {matched} | {per_request:.0} ns | {:.1} ns |",
        per_request / RULES as f64
    );
}

fn main() {
    let text: String = (0..RULES).map(rule).collect();
    let known = KnownNames::new(
        ["vllm-a", "trtllm-b", "vllm-canary"],
        ["llama-3.1-8b", "mistral-7b", "text-embedding-small"],
    );
    let set = match compile(
        &[RuleSource {
            path: "bench.toml".into(),
            text,
        }],
        &known,
    ) {
        Ok(set) => set,
        Err(e) => panic!("bench rules do not compile: {e}"),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "user-agent",
        HeaderValue::from_static("OpenAI/Python 1.51.0"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-xxxxxxxx"),
    );
    let tags = vec!["beta".to_string(), "intern-0".to_string()];
    let busy = RuleInput {
        method: "POST",
        path: "/v1/chat/completions",
        headers: &headers,
        client_ip: Some("172.16.4.20".parse().expect("ip")),
        key: KeyInfo {
            name: Some("alice"),
            team: Some("platform"),
            tags: &tags,
        },
        model: Some("llama-3.1-8b"),
        body: BodyFacts {
            stream: Some(true),
            max_tokens: Some(4000),
            temperature: Some(0.7),
            prompt_bytes: 2_400,
            ..BodyFacts::default()
        },
        request_id: "req-0001",
    };
    let mut quiet_headers = headers.clone();
    quiet_headers.insert("user-agent", HeaderValue::from_static("OpenAI/Node 4.0"));
    let quiet = RuleInput {
        headers: &quiet_headers,
        key: KeyInfo::default(),
        model: Some("llama-3.1-8b"),
        body: BodyFacts {
            max_tokens: Some(100),
            prompt_bytes: 2_400,
            ..BodyFacts::default()
        },
        ..busy
    };
    println!("| request | rules | matched | per request | per rule |");
    println!("|---|---|---|---|---|");
    bench(
        "typical chat request (clamp, tags, canary split)",
        &set,
        &busy,
    );
    bench("request matching no rule", &set, &quiet);
}
