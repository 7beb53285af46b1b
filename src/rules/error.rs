//! Load errors: every problem found, each with file, line, column, rule and field, so
//! `tokengate rules test` and a reload can show the whole list at once.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIssue {
    pub file: PathBuf,
    /// 1-based; `None` when the location is unknown (e.g. the file could not be read).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The rule the problem is in, when it has a name.
    pub rule: Option<String>,
    /// The `[[tests]]` entry the problem is in, when it has a name.
    pub test: Option<String>,
    /// Dotted path inside the rule, e.g. `actions[0].clamp`; empty for file-level problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule `{rule}`")?;
        }
        if let Some(test) = &self.test {
            write!(f, ": test `{test}`")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    pub issues: Vec<RuleIssue>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "rules rejected ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesError {}
