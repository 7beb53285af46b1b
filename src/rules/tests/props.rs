//! Properties: no input makes evaluation or compilation panic.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use proptest::prelude::*;

use super::{known, rules, try_rules, Req};
use crate::rules::{load_paths, BodyFacts, RuleSet};

/// Every operator and action kind at least once.
const ALL_KINDS: &str = r#"
[[rules]]
name = "everything"
when = { any = [
  { field = "method", in = ["GET", "POST"] },
  { field = "path", regex = "^/v1/.*(chat|emb)" },
  { field = "header.x-a", prefix = "p" },
  { field = "key.name", equals = "k" },
  { field = "key.team", exists = true },
  { field = "key.tags", in = ["a", "b"] },
  { field = "key.tags", contains = "c" },
  { field = "client_ip", cidr = ["10.0.0.0/8", "::/0"] },
  { field = "model", regex = "." },
  { field = "stream", equals = true },
  { field = "tools", exists = true },
  { not = { field = "max_tokens", gt = 100 } },
  { field = "max_completion_tokens", in = [1, 2] },
  { field = "n", lte = 3 },
  { field = "temperature", gte = 0.5 },
  { field = "prompt_bytes", lt = 10 },
] }
actions = [
  { set = "top_p", value = 0.9 },
  { set = "max_tokens", value = 77 },
  { clamp = "max_completion_tokens", min = 2, max = 9, default = 3 },
  { clamp = "temperature", max = 1 },
  { default = "n", value = 1 },
  { split = [ { cluster = "vllm-a", weight = 3 }, { cluster = "trtllm-b", weight = 1 } ] },
  { set_request_header = "x-b", value = "v" },
  { remove_request_header = "x-a" },
  { set_response_header = "x-c", value = "v" },
  { remove_response_header = "x-d" },
  { rate_limit_class = "c" },
  { priority = -3 },
  { tag = "t" },
]

[[rules]]
name = "deny"
when = { field = "prompt_bytes", gt = 1000 }
actions = [ { deny = { status = 413, message = "big", code = "request_too_large" } } ]
"#;

fn shipped() -> RuleSet {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lua-free-rules");
    load_paths(&[dir.into()], &known()).unwrap_or_else(|e| panic!("{e}"))
}

fn arb_req() -> impl Strategy<Value = Req> {
    let text = "\\PC{0,12}";
    (
        (
            text,
            text,
            proptest::collection::vec(("[a-z-]{1,8}", "[ -~]{0,10}"), 0..4),
        ),
        (proptest::option::of(any::<[u8; 16]>()), any::<bool>()),
        (
            proptest::option::of(text),
            proptest::option::of(text),
            proptest::collection::vec("[a-z]{0,3}", 0..4),
            proptest::option::of(text),
        ),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<f64>()),
            any::<bool>(),
            any::<u64>(),
        ),
        text,
    )
        .prop_map(
            |((method, path, headers), (ip, v4), (name, team, tags, model), b, id)| {
                let mut req = Req {
                    method,
                    path,
                    ip: ip.map(|bytes| {
                        if v4 {
                            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
                        } else {
                            IpAddr::from(bytes)
                        }
                    }),
                    key_name: name,
                    team,
                    tags,
                    model,
                    body: BodyFacts {
                        stream: b.0,
                        max_tokens: b.1,
                        max_completion_tokens: b.2,
                        n: b.3,
                        temperature: b.4,
                        has_tools: b.5,
                        prompt_bytes: b.6,
                    },
                    id,
                    ..Req::default()
                };
                for (name, value) in headers {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        req.headers.append(n, v);
                    }
                }
                req
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn evaluation_never_panics(req in arb_req()) {
        let sets = [rules(ALL_KINDS), shipped()];
        for set in &sets {
            let out = set.evaluate(&req.input());
            // Body sets are always valid JSON for the byte-exact rewriter.
            for (key, raw) in &out.body_sets {
                prop_assert!(serde_json::from_str::<serde_json::Value>(raw).is_ok(), "{key}={raw}");
            }
            // Only declared tags come out.
            for tag in &out.tags {
                prop_assert!(set.declared_tags().contains(tag));
            }
        }
    }

    #[test]
    fn compiling_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = try_rules(&text);
    }

    #[test]
    fn compiling_mutated_rule_files_never_panics(cut in 0usize..2000, insert in "[ -~\n]{0,6}") {
        let mut text = ALL_KINDS.to_string();
        let at = cut.min(text.len());
        if text.is_char_boundary(at) {
            text.insert_str(at, &insert);
        }
        let _ = try_rules(&text);
    }
}
