//! Load errors: precise locations, every problem reported, nothing half-loaded.

use super::{known, try_rules, Req};
use crate::rules::{compile, RuleSource};

/// Every issue of a file that must not load, rendered.
fn errors(text: &str) -> Vec<String> {
    match try_rules(text) {
        Ok(_) => panic!("expected errors, the rules loaded:\n{text}"),
        Err(e) => e.issues.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.into_iter().next().unwrap_or_default()
}

#[test]
fn unknown_field_in_an_action_names_file_line_rule_and_field() {
    let text = r#"# caps
[[rules]]
name = "cap-max-tokens"
when = { field = "max_tokens", gt = 512 }
actions = [
  { tag = "capped" },
  { clamp = "max_tokens", maxx = 512 },
]
"#;
    assert_eq!(
        one_error(text),
        "rules/t.toml:7:27: rule `cap-max-tokens`: actions[1].clamp: unknown field `maxx`; \
         expected one of `clamp`, `min`, `max`, `default`"
    );
}

#[test]
fn unknown_fields_everywhere_are_errors() {
    let all = errors(
        r#"
[[rule]]
name = "x"

[[rules]]
name = "a"
whenn = { always = true }
when = { field = "max_tokens", gtt = 1 }
actions = [ { deny = { status = 403, message = "m", cod = "x" } } ]

[[tests]]
name = "t"
expect = { deny_stats = 403 }
"#,
    );
    let expected = [
        "rules/t.toml:2:3: unknown field `rule`; expected `rules` or `tests`",
        "rules/t.toml:8:32: rule `a`: when: unknown field `gtt`; expected one of `field`, `equals`, `in`, `prefix`, `regex`, `gt`, `gte`, `lt`, `lte`, `exists`, `cidr`, `contains`",
        "rules/t.toml:8:8: rule `a`: when: missing operator for `max_tokens`; expected one of `gt`, `gte`, `lt`, `lte`, `equals`, `in`, `exists`",
        "rules/t.toml:9:53: rule `a`: actions[0].deny: unknown field `cod`; expected one of `status`, `message`, `code`",
        "rules/t.toml:7:1: rule `a`: unknown field `whenn`; expected one of `name`, `description`, `when`, `actions`, `then`",
        "rules/t.toml:13:12: test `t`: expect: unknown field `deny_stats`; expected one of `denied`, `deny_status`, `deny_code`, `deny_message`, `body_sets`, `route_cluster`, `rate_limit_class`, `priority`, `tags`, `matched`, `request_headers_set`, `request_headers_removed`, `response_headers_set`, `response_headers_removed`",
    ];
    assert_eq!(all, expected);
}

#[test]
fn bad_regex() {
    assert_eq!(
        one_error(
            r#"[[rules]]
name = "r"
when = { field = "path", regex = "^/v1/(chat" }
"#
        ),
        "rules/t.toml:3:34: rule `r`: when.regex: invalid regex `^/v1/(chat`: unclosed group"
    );
}

#[test]
fn bad_cidr_reports_each_bad_network() {
    let all = errors(
        r#"[[rules]]
name = "r"
when = { field = "client_ip", cidr = ["10.0.0.0/8", "10.0.0.0/33", "not-an-ip"] }
"#,
    );
    assert_eq!(
        all,
        [
            "rules/t.toml:3:53: rule `r`: when.cidr: `10.0.0.0/33` is not an IP network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)",
            "rules/t.toml:3:68: rule `r`: when.cidr: `not-an-ip` is not an IP network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)",
        ]
    );
}

#[test]
fn unknown_cluster_in_route_and_split() {
    let all = errors(
        r#"[[rules]]
name = "r"
when = { always = true }
actions = [
  { route = "vllm-z" },
  { split = [ { cluster = "vllm-a", weight = 1 }, { cluster = "nope", weight = 1 } ] },
]
"#,
    );
    assert_eq!(
        all,
        [
            "rules/t.toml:5:13: rule `r`: actions[0].route: unknown cluster `vllm-z` (known: trtllm-b, vllm-a, vllm-canary)",
            "rules/t.toml:6:63: rule `r`: actions[1].split[1].cluster: unknown cluster `nope` (known: trtllm-b, vllm-a, vllm-canary)",
        ]
    );
}

#[test]
fn duplicate_rule_name_across_files() {
    let a = RuleSource {
        path: "rules/10-a.toml".into(),
        text: "[[rules]]\nname = \"dup\"\nwhen = { always = true }\n".into(),
    };
    let b = RuleSource {
        path: "rules/20-b.toml".into(),
        text: "\n\n[[rules]]\nname = \"dup\"\nwhen = { always = true }\n".into(),
    };
    // Given in reverse: files are ordered by path, so the first definition is in 10-a.
    let err = compile(&[b, a], &known()).expect_err("duplicate");
    let all: Vec<String> = err.issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        all,
        ["rules/20-b.toml:4:8: rule `dup`: name: duplicate rule name; first defined at rules/10-a.toml:2"]
    );
}

#[test]
fn deny_with_a_success_status() {
    assert_eq!(
        one_error(
            r#"[[rules]]
name = "r"
when = { always = true }
actions = [ { deny = { status = 200, message = "ok?" } } ]
"#
        ),
        "rules/t.toml:4:33: rule `r`: actions[0].deny.status: 200 is not an error status; a deny answers with 400..=599"
    );
}

#[test]
fn semantic_errors_are_all_reported_in_one_load() {
    let all = errors(
        r#"
[[rules]]
name = "bad name!"
when = { always = true }

[[rules]]
name = "ops"
when = { all = [
  { field = "max_tokens", prefix = "1" },
  { field = "model", equals = "gpt-5" },
  { field = "method", equals = "post" },
  { field = "nope", equals = "x" },
  { field = "header.bad header", exists = true },
  { field = "max_tokens", gt = 1.5 },
  { field = "n", gt = 1, lt = 5 },
  { any = [] },
  { always = false },
] }
actions = [
  { deny = { status = 400, message = "x" } },
  { tag = "Bad Tag" },
  { set = "model", value = "x" },
  { clamp = "max_tokens", min = 10, max = 5 },
  { clamp = "messages", max = 5 },
  { default = "max_tokens", value = -1 },
  { set_request_header = "content-length", value = "1" },
  { split = [ { cluster = "vllm-a", weight = 0 } ] },
  { priority = 99999999999 },
  { route = "vllm-a", tag = "x" },
  { },
]
then = "halt"
"#,
    );
    let expected = [
        "rules/t.toml:3:8: rules[0].name: `bad name!` may only contain letters, digits, `-`, `_` and `.`",
        "rules/t.toml:9:36: rule `ops`: when.all[0].prefix: operator `prefix` does not apply to `max_tokens` (an integer); expected one of `gt`, `gte`, `lt`, `lte`, `equals`, `in`, `exists`",
        "rules/t.toml:10:31: rule `ops`: when.all[1].equals: unknown model alias `gpt-5` (known: llama-3.1-8b, mistral-7b, text-embedding-small)",
        "rules/t.toml:11:32: rule `ops`: when.all[2].equals: `post`: methods are matched exactly and are upper case (e.g. `POST`)",
        "rules/t.toml:12:13: rule `ops`: when.all[3].field: unknown field `nope`; expected one of `method`, `path`, `header.<name>`, `client_ip`, `key.name`, `key.team`, `key.tags`, `model`, `stream`, `max_tokens`, `max_completion_tokens`, `n`, `temperature`, `tools`, `prompt_bytes`",
        "rules/t.toml:13:13: rule `ops`: when.all[4].field: `bad header` is not a valid HTTP header name",
        "rules/t.toml:14:32: rule `ops`: when.all[5].gt: expected an integer, found a float",
        "rules/t.toml:15:3: rule `ops`: when.all[6]: one operator per expression (found `gt` and `lt`); combine expressions with `all`",
        "rules/t.toml:16:11: rule `ops`: when.all[7].any: needs at least one expression",
        "rules/t.toml:17:14: rule `ops`: when.all[8].always: must be `true` (to disable a rule, delete it)",
        "rules/t.toml:21:3: rule `ops`: actions[1]: unreachable: `deny` ends evaluation, so it must be the last action",
        "rules/t.toml:21:11: rule `ops`: actions[1].tag: `Bad Tag` must be 1 to 32 of `[a-z0-9_-]`",
        "rules/t.toml:22:11: rule `ops`: actions[2].set: `model` cannot be set by rules (the proxy owns it, or it carries the prompt)",
        "rules/t.toml:23:3: rule `ops`: actions[3].clamp: `min` (10) is greater than `max` (5)",
        "rules/t.toml:24:13: rule `ops`: actions[4].clamp: `messages` cannot be clamped or defaulted; expected one of `max_tokens`, `max_completion_tokens`, `n`, `temperature`",
        "rules/t.toml:25:37: rule `ops`: actions[5].default.value: `max_tokens` must not be negative",
        "rules/t.toml:26:26: rule `ops`: actions[6].set_request_header: `content-length` frames the HTTP message and cannot be changed by rules",
        "rules/t.toml:27:13: rule `ops`: actions[7].split: the weights add up to 0",
        "rules/t.toml:28:16: rule `ops`: actions[8].priority: out of range for a priority (32-bit integer)",
        "rules/t.toml:29:3: rule `ops`: actions[9]: one action per table (found `route` and `tag`); list them as separate actions",
        "rules/t.toml:30:3: rule `ops`: actions[10]: empty action; expected one of `deny`, `set`, `clamp`, `default`, `route`, `split`, `set_request_header`, `remove_request_header`, `set_response_header`, `remove_response_header`, `rate_limit_class`, `priority`, `tag`",
        "rules/t.toml:32:8: rule `ops`: then: unknown value `halt`; expected `continue` or `stop`",
    ];
    assert_eq!(all, expected);
}

#[test]
fn missing_required_fields() {
    let all = errors(
        r#"[[rules]]
description = "no name, no when"

[[rules]]
name = "no-when"
actions = [ { set = "user" }, { deny = { message = "x" } } ]
"#,
    );
    assert_eq!(
        all,
        [
            "rules/t.toml:1:1: rules[0]: missing field `name`",
            "rules/t.toml:1:1: rules[0]: missing field `when` (use `when = { always = true }` to match every request)",
            "rules/t.toml:4:1: rule `no-when`: missing field `when` (use `when = { always = true }` to match every request)",
            "rules/t.toml:6:13: rule `no-when`: actions[0].set: missing field `value`",
            "rules/t.toml:6:40: rule `no-when`: actions[1].deny: missing field `status`",
        ]
    );
}

#[test]
fn toml_syntax_error_points_at_the_spot() {
    let err = one_error("[[rules]]\nname = \"x\nwhen = 1\n");
    assert!(err.starts_with("rules/t.toml:2:"), "{err}");
    let date = one_error("[[rules]]\nname = 1979-05-27\n");
    assert!(date.contains("dates and times are not supported"), "{date}");
}

#[test]
fn test_section_errors_are_load_errors() {
    let all = errors(
        r#"[[rules]]
name = "r"
when = { always = true }

[[tests]]
name = "bad"
request = { body = '{"model": ', client_ip = "1.2.3", method = 5 }
expect = { route_cluster = "nowhere", deny_status = 200 }
"#,
    );
    assert_eq!(all.len(), 5, "{all:#?}");
    assert!(
        all[0].starts_with("rules/t.toml:7:64: test `bad`: request.method: expected a string"),
        "{all:#?}"
    );
    assert!(
        all[1].contains("request.client_ip: `1.2.3` is not an IP address"),
        "{all:#?}"
    );
    assert!(
        all[2].contains("request.body: body is not valid JSON"),
        "{all:#?}"
    );
    assert!(
        all[3].contains("expect.route_cluster: unknown cluster `nowhere`"),
        "{all:#?}"
    );
    assert!(
        all[4].contains("expect.deny_status: a deny status is 400..=599"),
        "{all:#?}"
    );
}

#[test]
fn nesting_is_bounded() {
    let mut when = String::from("{ always = true }");
    for _ in 0..20 {
        when = format!("{{ not = {when} }}");
    }
    let err = one_error(&format!("[[rules]]\nname = \"deep\"\nwhen = {when}\n"));
    assert!(err.contains("nested deeper than 16 levels"), "{err}");
}

#[test]
fn files_run_in_lexical_order() {
    let rule = |name: &str, cluster: &str| {
        RuleSource {
        path: format!("rules/{name}.toml").into(),
        text: format!(
            "[[rules]]\nname = \"{name}\"\nwhen = {{ always = true }}\nactions = [ {{ route = \"{cluster}\" }} ]\n"
        ),
    }
    };
    let set = compile(
        &[rule("20-second", "trtllm-b"), rule("10-first", "vllm-a")],
        &known(),
    )
    .expect("valid");
    let out = set.evaluate(&Req::default().input());
    assert_eq!(out.matched, ["10-first", "20-second"]);
    assert_eq!(out.route_cluster.as_deref(), Some("trtllm-b"));
}
