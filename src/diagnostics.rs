//! Problems found in a file a human wrote (config, keys, rules): one shape, one display, one
//! place that turns a TOML byte span into a line and column. A leaf: std only.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIssue {
    pub file: PathBuf,
    /// 1-based; `None` when the value was defaulted or the location is unknown.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `models[2].cluster`; empty for file-level problems.
    /// Rule files prefix it with the rule and test it is in (``rule `x`: actions[0]``).
    pub field: String,
    pub message: String,
}

impl FileIssue {
    /// A problem with the whole file (unreadable, no match): no location, no field.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> FileIssue {
        FileIssue {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: String::new(),
            message: message.into(),
        }
    }

    /// A problem at `span` of `text`. An empty span at 0 marks a defaulted value, which has
    /// no location to point at.
    pub fn at_span(
        file: &Path,
        text: &str,
        span: Range<usize>,
        field: String,
        message: String,
    ) -> FileIssue {
        let (line, column) = if span == (0..0) {
            (None, None)
        } else {
            line_col(text, span.start)
        };
        FileIssue {
            file: file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

impl fmt::Display for FileIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// The one list display of a rejected load: `<what> rejected (N errors):` then one issue a
/// line.
pub fn write_rejected(f: &mut fmt::Formatter<'_>, what: &str, issues: &[FileIssue]) -> fmt::Result {
    let n = issues.len();
    writeln!(
        f,
        "{what} rejected ({n} error{}):",
        if n == 1 { "" } else { "s" }
    )?;
    for issue in issues {
        writeln!(f, "  {issue}")?;
    }
    Ok(())
}

/// 1-based line and column (in characters) of a byte offset into `text`; the one place every
/// file loader (config, keys, rules) turns a TOML span into a location.
pub fn line_col(text: &str, offset: usize) -> (Option<usize>, Option<usize>) {
    let Some(before) = text.get(..offset) else {
        return (None, None);
    };
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (Some(line), Some(column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        assert_eq!(line_col("ab\ncé d", 7), (Some(2), Some(4)));
        assert_eq!(line_col("x", 0), (Some(1), Some(1)));
        assert_eq!(line_col("x", 9), (None, None));
    }

    #[test]
    fn display_has_location_field_and_message() {
        let mut i = FileIssue::at_span(
            Path::new("a.toml"),
            "x = 1\ny = 2",
            6..7,
            "y".into(),
            "bad".into(),
        );
        assert_eq!(i.to_string(), "a.toml:2:1: y: bad");
        i.field.clear();
        assert_eq!(i.to_string(), "a.toml:2:1: bad");
        let whole = FileIssue::whole_file(Path::new("a.toml"), "cannot read");
        assert_eq!(whole.to_string(), "a.toml: cannot read");
    }
}
