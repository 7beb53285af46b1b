//! Smoke run of the seeded fuzzer (bench/fuzz.rs): 10^4 inputs per target, 0 panics and 0 broken
//! invariants. The 10^6 runs are done in release mode by hand (README, "Security").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // tests fail loudly; scenarios read top to bottom

use std::process::Command;

#[test]
fn ten_thousand_inputs_per_target_without_panics() {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate-fuzz"))
        .args(["--iterations", "10000", "--seed", "13"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tokengate-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fuzzer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for target in ["body", "sse", "json", "rules", "config"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("target={target} ")))
            .unwrap_or_else(|| panic!("no report for {target}:\n{stdout}"));
        assert!(
            line.contains("inputs=10000 panics=0 invariant_failures=0"),
            "{line}"
        );
        // Seeds were found: the corpus, conf/ and rules directories were read.
        assert!(!line.contains(" seeds=1 "), "{line}");
        // Mutations keep some inputs valid, so the accepting paths run too.
        let accepted: u64 = line
            .split(" accepted=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(accepted > 0, "no input accepted: {line}");
    }
}
