//! The shipped `lua-free-rules/` directory loads against the demo's names and its own
//! `[[tests]]` pass.

use std::path::{Path, PathBuf};

use super::{known, Req};
use crate::rules::{load_paths, read_sources, run_rule_tests};

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/lua-free-rules"))
}

#[test]
fn shipped_rule_tests_pass() {
    let report = run_rule_tests(dir(), &known()).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.ok(), "{report}");
    assert!(report.passed >= 15, "{report}");
    assert_eq!(
        report.to_string().lines().last(),
        Some(format!("rule tests: {} passed, 0 failed", report.passed).as_str())
    );
}

#[test]
fn shipped_rules_load_by_pattern_and_evaluate() {
    let pattern: PathBuf = dir().join("*.toml");
    let set = load_paths(&[pattern], &known()).unwrap_or_else(|e| panic!("{e}"));
    assert!(set.len() >= 6);
    assert_eq!(
        set.files().len(),
        read_sources(&[dir().to_path_buf()]).map_or(0, |s| s.len())
    );
    let mut req = Req::default().key("team-eta");
    req.team = Some("interns".into());
    req.body.max_tokens = Some(4000);
    let out = set.evaluate(&req.input());
    assert_eq!(out.route_cluster.as_deref(), Some("vllm-canary"));
    assert_eq!(
        out.body_sets,
        [("max_tokens".to_string(), "512".to_string())]
    );
}

#[test]
fn a_failing_expectation_is_reported() {
    let tmp = std::env::temp_dir().join(format!("tokengate-rules-fail-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);
    let file = tmp.join("10-x.toml");
    std::fs::write(
        &file,
        r#"[[rules]]
name = "cap"
when = { always = true }
actions = [ { clamp = "max_tokens", max = 10 } ]

[[tests]]
name = "wrong on purpose"
request = { facts = { max_tokens = 50 } }
expect = { body_sets = { max_tokens = 11 }, tags = ["x"], route_cluster = false }
"#,
    )
    .expect("write temp rule file");
    let report = run_rule_tests(&tmp, &known()).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&tmp);
    assert_eq!(report.passed, 0);
    assert_eq!(report.failed.len(), 1);
    let text = report.to_string();
    assert!(
        text.contains("10-x.toml:6: test `wrong on purpose`"),
        "{text}"
    );
    assert!(
        text.contains("    body_sets: expected { max_tokens = 11 }, got { max_tokens = 10 }"),
        "{text}"
    );
    assert!(
        text.contains("    tags: expected [\"x\"], got []"),
        "{text}"
    );
    assert!(!text.contains("route_cluster"), "{text}");
    assert!(text.ends_with("rule tests: 0 passed, 1 failed\n"), "{text}");
}

#[test]
fn missing_directory_or_empty_pattern_is_an_error() {
    let err = load_paths(&[dir().join("*.nope")], &known()).expect_err("nothing matches");
    assert!(
        err.to_string().contains("no rule files match `*.nope`"),
        "{err}"
    );
    let err = load_paths(&["/nonexistent/dir/*.toml".into()], &known()).expect_err("no dir");
    assert!(err.to_string().contains("cannot read directory"), "{err}");
}
