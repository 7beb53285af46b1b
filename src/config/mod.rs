//! Configuration: the TOML file format (`file`), the validated model (`model`), and the
//! loader that turns one into the other, reporting every problem with file, line and field.

mod cluster;
mod connections;
pub mod diff;
pub mod file;
pub mod fleet;
pub mod model;
mod tls;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use crate::diagnostics::line_col;
use validate::{Locator, Validator};

pub use fleet::FleetSettings;
pub use model::{
    AccessLogTarget, AuthSettings, Cluster, Config, Flavour, Replica, Route, ServerSettings,
    TlsFiles,
};

/// One problem found in a config file (the shared diagnostics shape).
pub use crate::diagnostics::FileIssue as ConfigIssue;

/// Every problem found in one load; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::diagnostics::write_rejected(f, "configuration", &self.issues)
    }
}

impl std::error::Error for ConfigError {}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigError {
            issues: vec![ConfigIssue::whole_file(
                path,
                format!("cannot read file: {e}"),
            )],
        }),
    }
}

/// Validate config text; `path` only names the source in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let located = Locator { text, path };
    let raw: file::ConfigFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = match e.span() {
                Some(span) => line_col(text, span.start),
                None => (None, None),
            };
            return Err(ConfigError {
                issues: vec![ConfigIssue {
                    file: path.to_path_buf(),
                    line,
                    column,
                    field: String::new(),
                    message: e.message().trim().to_string(),
                }],
            });
        }
    };
    let mut v = Validator {
        at: located,
        issues: Vec::new(),
    };
    let config = v.config(raw);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { issues: v.issues })
    }
}
