//! `[[tests]]`: example requests shipped next to the rules, with what the rules must decide
//! for them. Parsed (and checked) on every load, run by `tokengate rules test`.
//!
//! Only the expectations a test names are checked; each one compares the whole value (e.g.
//! `body_sets = {}` asserts that nothing in the body changes).

mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::input::{BodyFacts, KeyInfo, RuleInput, RuleOutcome};
use super::RuleSet;

pub(crate) use parse::parse_test;

#[derive(Debug, Clone)]
pub(crate) struct TestCase {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    pub request: TestRequest,
    pub expect: Expect,
}

#[derive(Debug, Clone)]
pub(crate) struct TestRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub client_ip: Option<IpAddr>,
    pub key_name: Option<String>,
    pub key_team: Option<String>,
    pub key_tags: Vec<String>,
    pub model: Option<String>,
    pub facts: BodyFacts,
    pub request_id: String,
}

/// `None` = not checked. For optional outcomes, `Some(None)` asserts "none" (written `false`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    pub denied: Option<bool>,
    pub deny_status: Option<u16>,
    pub deny_code: Option<String>,
    pub deny_message: Option<String>,
    pub body_sets: Option<BTreeMap<String, serde_json::Value>>,
    pub route_cluster: Option<Option<String>>,
    pub rate_limit_class: Option<Option<String>>,
    pub priority: Option<Option<i32>>,
    pub tags: Option<Vec<String>>,
    pub matched: Option<Vec<String>>,
    pub request_headers_set: Option<BTreeMap<String, String>>,
    pub request_headers_removed: Option<Vec<String>>,
    pub response_headers_set: Option<BTreeMap<String, String>>,
    pub response_headers_removed: Option<Vec<String>>,
}

/// The result of `tokengate rules test`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    pub passed: usize,
    pub failed: Vec<Failure>,
}

impl TestReport {
    /// Every test passed (vacuously true with no tests).
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One failing test, with every expectation it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub file: PathBuf,
    pub line: usize,
    pub test: String,
    pub mismatches: Vec<Mismatch>,
}

/// One expectation that did not hold, both sides rendered like the TOML that states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The `expect` key, e.g. `body_sets`.
    pub what: String,
    pub expected: String,
    pub got: String,
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in &self.failed {
            writeln!(
                f,
                "FAIL {}:{}: test `{}`",
                failure.file.display(),
                failure.line,
                failure.test
            )?;
            for m in &failure.mismatches {
                writeln!(f, "    {}: expected {}, got {}", m.what, m.expected, m.got)?;
            }
        }
        writeln!(
            f,
            "rule tests: {} passed, {} failed",
            self.passed,
            self.failed.len()
        )
    }
}

pub(crate) fn run(rules: &RuleSet, tests: &[TestCase]) -> TestReport {
    let mut report = TestReport::default();
    for test in tests {
        let r = &test.request;
        let input = RuleInput {
            method: &r.method,
            path: &r.path,
            headers: &r.headers,
            client_ip: r.client_ip,
            key: KeyInfo {
                name: r.key_name.as_deref(),
                team: r.key_team.as_deref(),
                tags: &r.key_tags,
            },
            model: r.model.as_deref(),
            body: r.facts,
            request_id: &r.request_id,
        };
        let outcome = rules.evaluate(&input);
        let mismatches = compare(&test.expect, &outcome);
        if mismatches.is_empty() {
            report.passed += 1;
        } else {
            report.failed.push(Failure {
                file: test.file.clone(),
                line: test.line,
                test: test.name.clone(),
                mismatches,
            });
        }
    }
    report
}

/// Every expectation a test states, compared in a fixed order: deny, body and routing, headers.
fn compare(e: &Expect, got: &RuleOutcome<'_>) -> Vec<Mismatch> {
    let mut out = Mismatches::default();
    out.deny(e, got);
    out.body_and_routing(e, got);
    out.headers(e, got);
    out.0
}

#[derive(Default)]
struct Mismatches(Vec<Mismatch>);

impl Mismatches {
    fn check(&mut self, what: &str, expected: String, actual: String) {
        if expected != actual {
            self.0.push(Mismatch {
                what: what.to_string(),
                expected,
                got: actual,
            });
        }
    }

    fn deny(&mut self, e: &Expect, got: &RuleOutcome<'_>) {
        let deny = got.deny.as_ref();
        if let Some(denied) = e.denied {
            self.check("denied", denied.to_string(), deny.is_some().to_string());
        }
        if let Some(status) = e.deny_status {
            self.check(
                "deny_status",
                status.to_string(),
                opt(deny.map(|d| d.status.to_string())),
            );
        }
        if let Some(code) = &e.deny_code {
            self.check("deny_code", quote(code), opt(deny.map(|d| quote(&d.code))));
        }
        if let Some(message) = &e.deny_message {
            self.check(
                "deny_message",
                quote(message),
                opt(deny.map(|d| quote(&d.message))),
            );
        }
    }

    fn body_and_routing(&mut self, e: &Expect, got: &RuleOutcome<'_>) {
        if let Some(sets) = &e.body_sets {
            let actual: BTreeMap<String, serde_json::Value> = got
                .body_sets
                .iter()
                .map(|(k, raw)| {
                    let value = serde_json::from_str(raw).unwrap_or_else(|_| {
                        serde_json::Value::String(format!("<invalid JSON {raw}>"))
                    });
                    (k.clone(), value)
                })
                .collect();
            self.check("body_sets", json_map(sets), json_map(&actual));
        }
        if let Some(cluster) = &e.route_cluster {
            self.check(
                "route_cluster",
                opt(cluster.as_deref().map(quote)),
                opt(got.route_cluster.as_deref().map(quote)),
            );
        }
        if let Some(class) = &e.rate_limit_class {
            self.check(
                "rate_limit_class",
                opt(class.as_deref().map(quote)),
                opt(got.rate_limit_class.as_deref().map(quote)),
            );
        }
        if let Some(priority) = e.priority {
            self.check(
                "priority",
                opt(priority.map(|p| p.to_string())),
                opt(got.priority.map(|p| p.to_string())),
            );
        }
        if let Some(tags) = &e.tags {
            self.check("tags", list(tags), list(&got.tags));
        }
        if let Some(matched) = &e.matched {
            self.check("matched", list(matched), list(&got.matched));
        }
    }

    fn headers(&mut self, e: &Expect, got: &RuleOutcome<'_>) {
        if let Some(sets) = &e.request_headers_set {
            self.check(
                "request_headers_set",
                str_map(sets),
                str_map(&header_map(&got.set_request_headers)),
            );
        }
        if let Some(removed) = &e.request_headers_removed {
            self.check(
                "request_headers_removed",
                list(removed),
                list(&header_names(&got.remove_request_headers)),
            );
        }
        if let Some(sets) = &e.response_headers_set {
            self.check(
                "response_headers_set",
                str_map(sets),
                str_map(&header_map(&got.set_response_headers)),
            );
        }
        if let Some(removed) = &e.response_headers_removed {
            self.check(
                "response_headers_removed",
                list(removed),
                list(&header_names(&got.remove_response_headers)),
            );
        }
    }
}

fn header_map(sets: &[(HeaderName, HeaderValue)]) -> BTreeMap<String, String> {
    sets.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn header_names(names: &[HeaderName]) -> Vec<String> {
    names.iter().map(ToString::to_string).collect()
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn opt(s: Option<String>) -> String {
    s.unwrap_or_else(|| "none".to_string())
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

fn json_map(map: &BTreeMap<String, serde_json::Value>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", items.join(", "))
}

fn str_map(map: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k:?} = {v:?}")).collect();
    format!("{{ {} }}", items.join(", "))
}
