//! Evaluation: every operator, combinator and action, ordering and split behaviour.

use std::net::IpAddr;

use super::{matches, rules, Req};
use crate::rules::{BodyFacts, Deny};

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().expect("test ip"))
}

#[test]
fn string_operators_on_every_string_field() {
    let req = Req {
        team: Some("interns".into()),
        ..Req::default()
    }
    .key("alice")
    .header("X-Team", "Blue");
    assert!(matches(r#"{ field = "method", equals = "POST" }"#, &req));
    assert!(!matches(r#"{ field = "method", equals = "GET" }"#, &req));
    assert!(matches(
        r#"{ field = "method", in = ["GET", "POST"] }"#,
        &req
    ));
    assert!(matches(r#"{ field = "path", prefix = "/v1/chat" }"#, &req));
    assert!(!matches(r#"{ field = "path", prefix = "/v1/emb" }"#, &req));
    assert!(matches(
        r#"{ field = "path", regex = "^/v1/(chat/)?completions$" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "header.x-team", equals = "Blue" }"#,
        &req
    ));
    // Header names are case-insensitive; values are not.
    assert!(matches(
        r#"{ field = "header.X-TEAM", equals = "Blue" }"#,
        &req
    ));
    assert!(!matches(
        r#"{ field = "header.x-team", equals = "blue" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "header.x-team", regex = "(?i)^blue$" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "header.x-team", exists = true }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "header.x-other", exists = false }"#,
        &req
    ));
    assert!(!matches(
        r#"{ field = "header.x-other", equals = "" }"#,
        &req
    ));
    assert!(matches(r#"{ field = "key.name", equals = "alice" }"#, &req));
    assert!(matches(
        r#"{ field = "key.name", in = ["bob", "alice"] }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "key.team", prefix = "intern" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "model", equals = "llama-3.1-8b" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "model", in = ["mistral-7b", "llama-3.1-8b"] }"#,
        &req
    ));
    assert!(matches(r#"{ field = "model", regex = "^llama-" }"#, &req));
}

#[test]
fn absent_values_match_only_exists_false() {
    let req = Req {
        model: None,
        ..Req::default()
    };
    for when in [
        r#"{ field = "key.name", equals = "x" }"#,
        r#"{ field = "key.name", prefix = "" }"#,
        r#"{ field = "key.team", regex = ".*" }"#,
        r#"{ field = "model", exists = true }"#,
        r#"{ field = "max_tokens", gte = 0 }"#,
        r#"{ field = "temperature", lt = 100 }"#,
        r#"{ field = "stream", equals = false }"#,
        r#"{ field = "client_ip", cidr = "0.0.0.0/0" }"#,
        r#"{ field = "key.tags", exists = true }"#,
    ] {
        assert!(!matches(when, &req), "{when}");
    }
    for when in [
        r#"{ field = "key.name", exists = false }"#,
        r#"{ field = "model", exists = false }"#,
        r#"{ field = "max_tokens", exists = false }"#,
        r#"{ field = "client_ip", exists = false }"#,
        r#"{ field = "stream", exists = false }"#,
        r#"{ not = { field = "key.name", equals = "x" } }"#,
    ] {
        assert!(matches(when, &req), "{when}");
    }
}

#[test]
fn repeated_header_matches_any_value() {
    let req = Req::default()
        .header("x-env", "dev")
        .header("x-env", "prod");
    assert!(matches(
        r#"{ field = "header.x-env", equals = "prod" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "header.x-env", equals = "dev" }"#,
        &req
    ));
    assert!(!matches(
        r#"{ field = "header.x-env", equals = "test" }"#,
        &req
    ));
}

#[test]
fn tag_operators() {
    let req = Req::default().tags(&["intern", "eu"]);
    assert!(matches(
        r#"{ field = "key.tags", contains = "intern" }"#,
        &req
    ));
    assert!(!matches(
        r#"{ field = "key.tags", contains = "int" }"#,
        &req
    ));
    assert!(matches(
        r#"{ field = "key.tags", in = ["us", "eu"] }"#,
        &req
    ));
    assert!(!matches(r#"{ field = "key.tags", in = ["us"] }"#, &req));
    assert!(matches(r#"{ field = "key.tags", exists = true }"#, &req));
    assert!(matches(
        r#"{ field = "key.tags", exists = false }"#,
        &Req::default()
    ));
}

#[test]
fn cidr_operator() {
    let v4 = Req {
        ip: ip("10.1.2.3"),
        ..Req::default()
    };
    assert!(matches(
        r#"{ field = "client_ip", cidr = "10.0.0.0/8" }"#,
        &v4
    ));
    assert!(!matches(
        r#"{ field = "client_ip", cidr = "192.168.0.0/16" }"#,
        &v4
    ));
    assert!(matches(
        r#"{ field = "client_ip", cidr = ["192.168.0.0/16", "10.1.0.0/16"] }"#,
        &v4
    ));
    // A bare address is a /32; host bits in a network are ignored.
    assert!(matches(
        r#"{ field = "client_ip", cidr = "10.1.2.3" }"#,
        &v4
    ));
    assert!(!matches(
        r#"{ field = "client_ip", cidr = "10.1.2.4" }"#,
        &v4
    ));
    assert!(matches(
        r#"{ field = "client_ip", cidr = "10.1.2.99/24" }"#,
        &v4
    ));
    assert!(matches(r#"{ field = "client_ip", exists = true }"#, &v4));
    let v6 = Req {
        ip: ip("2001:db8::1"),
        ..Req::default()
    };
    assert!(matches(
        r#"{ field = "client_ip", cidr = "2001:db8::/32" }"#,
        &v6
    ));
    assert!(!matches(
        r#"{ field = "client_ip", cidr = "10.0.0.0/8" }"#,
        &v6
    ));
    // A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6.
    let mapped = Req {
        ip: ip("::ffff:10.1.2.3"),
        ..Req::default()
    };
    assert!(matches(
        r#"{ field = "client_ip", cidr = "10.0.0.0/8" }"#,
        &mapped
    ));
}

#[test]
fn numeric_operators() {
    let req = Req {
        body: BodyFacts {
            max_tokens: Some(512),
            max_completion_tokens: Some(7),
            n: Some(2),
            temperature: Some(0.7),
            prompt_bytes: 1000,
            ..BodyFacts::default()
        },
        ..Req::default()
    };
    let cases = [
        (r#"{ field = "max_tokens", gt = 511 }"#, true),
        (r#"{ field = "max_tokens", gt = 512 }"#, false),
        (r#"{ field = "max_tokens", gte = 512 }"#, true),
        (r#"{ field = "max_tokens", lt = 512 }"#, false),
        (r#"{ field = "max_tokens", lte = 512 }"#, true),
        (r#"{ field = "max_tokens", equals = 512 }"#, true),
        (r#"{ field = "max_tokens", in = [1, 512] }"#, true),
        (r#"{ field = "max_tokens", gt = -1 }"#, true),
        (r#"{ field = "max_completion_tokens", lt = 8 }"#, true),
        (r#"{ field = "n", equals = 2 }"#, true),
        (r#"{ field = "prompt_bytes", gt = 999 }"#, true),
        (r#"{ field = "prompt_bytes", gt = 1000 }"#, false),
        (r#"{ field = "temperature", gt = 0.5 }"#, true),
        (r#"{ field = "temperature", lte = 0.7 }"#, true),
        (r#"{ field = "temperature", lt = 1 }"#, true),
        (r#"{ field = "temperature", equals = 0.7 }"#, true),
        (r#"{ field = "temperature", in = [0, 1] }"#, false),
    ];
    for (when, want) in cases {
        assert_eq!(matches(when, &req), want, "{when}");
    }
}

#[test]
fn boolean_fields() {
    let streaming_tools = Req {
        body: BodyFacts {
            stream: Some(true),
            has_tools: true,
            ..BodyFacts::default()
        },
        ..Req::default()
    };
    assert!(matches(
        r#"{ field = "stream", equals = true }"#,
        &streaming_tools
    ));
    assert!(matches(
        r#"{ field = "stream", exists = true }"#,
        &streaming_tools
    ));
    assert!(matches(
        r#"{ field = "tools", exists = true }"#,
        &streaming_tools
    ));
    assert!(matches(
        r#"{ field = "tools", equals = true }"#,
        &streaming_tools
    ));
    let plain = Req::default();
    assert!(!matches(r#"{ field = "stream", equals = false }"#, &plain));
    assert!(matches(r#"{ field = "tools", exists = false }"#, &plain));
}

#[test]
fn combinators() {
    let req = Req::default().key("alice").tags(&["intern"]);
    let t = r#"{ field = "key.name", equals = "alice" }"#;
    let f = r#"{ field = "key.name", equals = "bob" }"#;
    assert!(matches(&format!("{{ all = [{t}, {t}] }}"), &req));
    assert!(!matches(&format!("{{ all = [{t}, {f}] }}"), &req));
    assert!(matches(&format!("{{ any = [{f}, {t}] }}"), &req));
    assert!(!matches(&format!("{{ any = [{f}, {f}] }}"), &req));
    assert!(matches(&format!("{{ not = {f} }}"), &req));
    assert!(!matches(&format!("{{ not = {t} }}"), &req));
    assert!(matches("{ always = true }", &req));
    assert!(matches(
        &format!("{{ all = [ {{ any = [{f}, {{ not = {f} }}] }}, {{ not = {{ all = [{t}, {f}] }} }} ] }}"),
        &req
    ));
}

#[test]
fn deny_action_and_default_code() {
    let set = rules(
        r#"
[[rules]]
name = "no"
when = { field = "key.name", equals = "mallory" }
actions = [ { tag = "blocked" }, { deny = { status = 403, message = "Go away." } } ]

[[rules]]
name = "never-reached"
when = { always = true }
actions = [ { tag = "late" } ]
"#,
    );
    let req = Req::default().key("mallory");
    let out = set.evaluate(&req.input());
    assert_eq!(
        out.deny,
        Some(Deny {
            status: 403,
            message: "Go away.".into(),
            code: "request_denied".into()
        })
    );
    assert_eq!(out.tags, ["blocked"]);
    assert_eq!(out.matched, ["no"]);
    let out = set.evaluate(&Req::default().key("alice").input());
    assert_eq!(out.deny, None);
    assert_eq!(out.matched, ["never-reached"]);
}

const CLAMPS: &str = r#"
[[rules]]
name = "clamp"
when = { always = true }
actions = [
  { clamp = "max_tokens", min = 16, max = 512 },
  { clamp = "temperature", min = 0.1, max = 1.5, default = 0.7 },
  { default = "n", value = 1 },
]
"#;

fn clamp_sets(facts: BodyFacts) -> Vec<(String, String)> {
    let set = rules(CLAMPS);
    let req = Req {
        body: facts,
        ..Req::default()
    };
    set.evaluate(&req.input()).body_sets
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn clamp_min_max_default() {
    // Over the max, absent temperature (default applies), absent n (default applies).
    assert_eq!(
        clamp_sets(BodyFacts {
            max_tokens: Some(4000),
            ..BodyFacts::default()
        }),
        pairs(&[("max_tokens", "512"), ("temperature", "0.7"), ("n", "1")])
    );
    // Under the min; temperature above its max; n present so no default.
    assert_eq!(
        clamp_sets(BodyFacts {
            max_tokens: Some(1),
            temperature: Some(2.0),
            n: Some(3),
            ..BodyFacts::default()
        }),
        pairs(&[("max_tokens", "16"), ("temperature", "1.5")])
    );
    // In range everywhere: nothing to rewrite.
    assert_eq!(
        clamp_sets(BodyFacts {
            max_tokens: Some(100),
            temperature: Some(0.5),
            n: Some(1),
            ..BodyFacts::default()
        }),
        pairs(&[])
    );
    // Absent max_tokens and no default: clamp does nothing.
    assert!(!clamp_sets(BodyFacts {
        temperature: Some(0.5),
        n: Some(1),
        ..BodyFacts::default()
    })
    .iter()
    .any(|(k, _)| k == "max_tokens"));
}

#[test]
fn later_rules_see_updated_body_values_and_last_set_wins() {
    let set = rules(
        r#"
[[rules]]
name = "cap"
when = { field = "max_tokens", gt = 512 }
actions = [ { clamp = "max_tokens", max = 512 } ]

[[rules]]
name = "sees-capped"
when = { field = "max_tokens", equals = 512 }
actions = [ { set = "max_tokens", value = 300 }, { set = "user", value = { team = "x", n = [1, 2.5, true] } } ]

[[rules]]
name = "sees-set"
when = { field = "max_tokens", equals = 300 }
actions = [ { tag = "saw-300" } ]
"#,
    );
    let req = Req {
        body: BodyFacts {
            max_tokens: Some(9000),
            ..BodyFacts::default()
        },
        ..Req::default()
    };
    let out = set.evaluate(&req.input());
    assert_eq!(out.matched, ["cap", "sees-capped", "sees-set"]);
    assert_eq!(
        out.body_sets,
        pairs(&[
            ("max_tokens", "300"),
            ("user", r#"{"n":[1,2.5,true],"team":"x"}"#)
        ])
    );
    assert_eq!(out.tags, ["saw-300"]);
}

#[test]
fn continue_and_stop() {
    let set = rules(
        r#"
[[rules]]
name = "a"
when = { always = true }
actions = [ { route = "vllm-a" }, { priority = 1 } ]

[[rules]]
name = "b"
when = { field = "key.name", equals = "vip" }
actions = [ { route = "trtllm-b" }, { priority = 9 } ]
then = "stop"

[[rules]]
name = "c"
when = { always = true }
actions = [ { rate_limit_class = "default" } ]
"#,
    );
    let out = set.evaluate(&Req::default().input());
    assert_eq!(out.matched, ["a", "c"]);
    assert_eq!(out.route_cluster.as_deref(), Some("vllm-a"));
    assert_eq!(out.priority, Some(1));
    assert_eq!(out.rate_limit_class.as_deref(), Some("default"));
    let out = set.evaluate(&Req::default().key("vip").input());
    assert_eq!(out.matched, ["a", "b"]);
    assert_eq!(out.route_cluster.as_deref(), Some("trtllm-b"));
    assert_eq!(out.priority, Some(9));
    assert_eq!(out.rate_limit_class, None);
}

#[test]
fn header_actions_stay_disjoint() {
    let set = rules(
        r#"
[[rules]]
name = "first"
when = { always = true }
actions = [
  { set_request_header = "X-A", value = "1" },
  { remove_request_header = "x-b" },
  { set_response_header = "x-c", value = "3" },
  { remove_response_header = "server" },
]

[[rules]]
name = "second"
when = { always = true }
actions = [
  { remove_request_header = "x-a" },
  { set_request_header = "x-b", value = "2" },
  { set_request_header = "x-d", value = "4" },
  { set_request_header = "x-d", value = "5" },
  { tag = "t" },
  { tag = "t" },
]
"#,
    );
    let out = set.evaluate(&Req::default().input());
    let sets: Vec<(&str, &str)> = out
        .set_request_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("")))
        .collect();
    assert_eq!(sets, [("x-b", "2"), ("x-d", "5")]);
    let removed: Vec<&str> = out
        .remove_request_headers
        .iter()
        .map(|n| n.as_str())
        .collect();
    assert_eq!(removed, ["x-a"]);
    assert_eq!(out.set_response_headers.len(), 1);
    assert_eq!(out.remove_response_headers[0].as_str(), "server");
    assert_eq!(out.tags, ["t"]);
}

#[test]
fn no_match_leaves_outcome_empty_and_unallocated() {
    let set = rules(
        r#"
[[rules]]
name = "never"
when = { all = [ { field = "key.name", regex = "^x+$" }, { field = "max_tokens", gt = 5 } ] }
actions = [ { tag = "x" }, { set = "max_tokens", value = 1 } ]
"#,
    );
    let out = set.evaluate(&Req::default().key("alice").input());
    assert_eq!(out, Default::default());
    assert_eq!(out.matched.capacity(), 0);
    assert_eq!(out.body_sets.capacity(), 0);
    assert_eq!(out.tags.capacity(), 0);
}

const SPLIT: &str = r#"
[[rules]]
name = "canary"
when = { always = true }
actions = [ { split = [ { cluster = "vllm-canary", weight = 10 }, { cluster = "vllm-a", weight = 90 } ] } ]
"#;

#[test]
fn split_weights_hold_over_many_keys() {
    let set = rules(SPLIT);
    let mut canary = 0;
    for i in 0..10_000 {
        let req = Req::default().key(&format!("key-{i}"));
        if set.evaluate(&req.input()).route_cluster.as_deref() == Some("vllm-canary") {
            canary += 1;
        }
    }
    assert!(
        (800..=1200).contains(&canary),
        "canary share {canary}/10000"
    );
}

#[test]
fn split_is_sticky_by_key_and_falls_back_to_request_id() {
    let set = rules(SPLIT);
    for i in 0..200 {
        let key = format!("k{i}");
        let first = Req {
            id: "a".into(),
            ..Req::default()
        }
        .key(&key);
        let second = Req {
            id: "b".into(),
            ..Req::default()
        }
        .key(&key);
        assert_eq!(
            set.evaluate(&first.input()).route_cluster,
            set.evaluate(&second.input()).route_cluster,
            "key {key} changed side with the request id"
        );
    }
    // Without a key, the request id decides, deterministically.
    let mut sides = std::collections::HashSet::new();
    for i in 0..200 {
        let req = Req {
            id: format!("req-{i}"),
            ..Req::default()
        };
        let a = set.evaluate(&req.input()).route_cluster;
        assert_eq!(a, set.evaluate(&req.input()).route_cluster);
        sides.insert(a);
    }
    assert_eq!(sides.len(), 2, "request ids spread over both sides");
}

#[test]
fn split_sticky_request_ignores_the_key() {
    let set = rules(
        r#"
[[rules]]
name = "per-request"
when = { always = true }
actions = [ { split = [ { cluster = "vllm-canary", weight = 50 }, { cluster = "vllm-a", weight = 50 } ], sticky = "request" } ]
"#,
    );
    let sides: std::collections::HashSet<_> = (0..64)
        .map(|i| {
            let req = Req {
                id: format!("r{i}"),
                ..Req::default()
            }
            .key("same-key");
            set.evaluate(&req.input()).route_cluster
        })
        .collect();
    assert_eq!(sides.len(), 2);
}

#[test]
fn zero_weight_arm_is_never_chosen() {
    let set = rules(
        r#"
[[rules]]
name = "drained"
when = { always = true }
actions = [ { split = [ { cluster = "vllm-canary", weight = 0 }, { cluster = "vllm-a", weight = 1 } ] } ]
"#,
    );
    for i in 0..500 {
        let req = Req::default().key(&format!("k{i}"));
        assert_eq!(
            set.evaluate(&req.input()).route_cluster.as_deref(),
            Some("vllm-a")
        );
    }
}

#[test]
fn declared_tags_and_classes_are_the_bounded_set() {
    let set = rules(
        r#"
[[rules]]
name = "a"
when = { always = true }
actions = [ { tag = "zeta" }, { tag = "alpha" }, { rate_limit_class = "batch" } ]

[[rules]]
name = "b"
when = { always = true }
actions = [ { tag = "alpha" } ]
"#,
    );
    assert_eq!(set.declared_tags(), ["alpha", "zeta"]);
    assert_eq!(set.rate_limit_classes(), ["batch"]);
    assert_eq!(set.rule_names().collect::<Vec<_>>(), ["a", "b"]);
    let locations: Vec<_> = set.rule_locations().map(|(n, _, line)| (n, line)).collect();
    assert_eq!(locations, [("a", 3), ("b", 8)]);
}

#[test]
fn rule_set_can_be_shared_across_worker_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<crate::rules::RuleSet>();
}
