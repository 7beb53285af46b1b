//! Load errors: every problem found, each with file, line, column, rule and field, so
//! `tokengate rules test` and a reload can show the whole list at once.

use std::fmt;

/// One problem found in a rule file: the shared diagnostics shape. Its `field` starts with
/// the rule and `[[tests]]` entry it is in (``rule `x`: test `y`: actions[0].clamp``).
pub use crate::diagnostics::FileIssue as RuleIssue;

/// The `field` of a rule issue: the rule and test it is in, then the dotted path inside it.
pub(crate) fn rule_field(rule: Option<&str>, test: Option<&str>, field: &str) -> String {
    let mut parts = Vec::with_capacity(3);
    if let Some(rule) = rule {
        parts.push(format!("rule `{rule}`"));
    }
    if let Some(test) = test {
        parts.push(format!("test `{test}`"));
    }
    if !field.is_empty() {
        parts.push(field.to_string());
    }
    parts.join(": ")
}

/// Every problem found in one load; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    pub issues: Vec<RuleIssue>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::diagnostics::write_rejected(f, "rules", &self.issues)
    }
}

impl std::error::Error for RulesError {}
