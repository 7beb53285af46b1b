//! Configuration: the TOML file format (`file`), the validated model (`model`), and the
//! loader that turns one into the other, reporting every problem with file, line and field.

mod body_budget;
mod classes;
mod cluster;
mod connections;
pub mod diff;
pub mod file;
pub mod fleet;
pub mod model;
pub mod overlay;
pub mod overlay_edit;
mod tls;
mod validate;

#[cfg(test)]
mod overlay_tests;
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

/// Read and validate a config file, merged with its runtime overlay (`overlay`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse_merged(&read(path)?, path, None)
}

/// `load` with `overlay_text` in place of the overlay file's content: an admin change is
/// validated this way before it is written.
pub fn load_with_overlay(path: &Path, overlay_text: &str) -> Result<Config, ConfigError> {
    parse_merged(&read(path)?, path, Some(overlay_text))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        issues: vec![ConfigIssue::whole_file(
            path,
            format!("cannot read file: {e}"),
        )],
    })
}

/// Validate config text alone (no overlay); `path` only names the source in messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: file::ConfigFile = deserialize(text, text, path, 0)?;
    let mut v = Validator {
        at: Locator {
            text,
            path,
            overlay: None,
        },
        issues: Vec::new(),
    };
    let config = v.config(raw);
    finish(v, config)
}

/// Validate config text as the file at `path`, merged with its overlay: `overlay_text`, or
/// else the overlay file's content (none when it does not exist). Exactly what a load does.
pub fn parse_merged(
    text: &str,
    path: &Path,
    overlay_text: Option<&str>,
) -> Result<Config, ConfigError> {
    let mut raw: file::ConfigFile = deserialize(text, text, path, 0)?;
    let overlay_path = overlay::overlay_path(raw.server.overlay_file.as_ref(), path);
    let read_text;
    let overlay_text = match overlay_text {
        Some(t) => Some(t),
        None => match std::fs::read_to_string(&overlay_path) {
            Ok(t) => {
                read_text = t;
                Some(read_text.as_str())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                let message = format!("cannot read the overlay file: {e}");
                return Err(ConfigError {
                    issues: vec![ConfigIssue::whole_file(&overlay_path, message)],
                });
            }
        },
    };
    let origins = overlay::Origins {
        overlay_file: overlay_path.clone(),
        overlay_present: overlay_text.is_some(),
        ..Default::default()
    };
    // The overlay is parsed behind `offset` spaces so its spans lie past the config text's and
    // one `Locator` can tell which file a value came from.
    let offset = text.len() + 1;
    let mut v = Validator {
        at: Locator {
            text,
            path,
            overlay: overlay_text.map(|t| (t, overlay_path.as_path(), offset)),
        },
        issues: Vec::new(),
    };
    let parsed = match overlay_text {
        Some(t) => deserialize(&format!("{:offset$}{t}", ""), t, &overlay_path, offset)?,
        None => overlay::OverlayFile::default(),
    };
    let origins = v.merge_overlay(&mut raw, parsed, origins);
    let mut config = v.config(raw);
    config.origins = origins;
    finish(v, config)
}

/// The load's result: `config` if no problem was found.
fn finish(v: Validator<'_>, config: Config) -> Result<Config, ConfigError> {
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { issues: v.issues })
    }
}

/// Deserialize TOML `padded` (`text` behind `offset` spaces); a syntax or shape error is
/// located in `text`.
fn deserialize<T: serde::de::DeserializeOwned>(
    padded: &str,
    text: &str,
    path: &Path,
    offset: usize,
) -> Result<T, ConfigError> {
    toml::from_str(padded).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start.saturating_sub(offset)),
            None => (None, None),
        };
        ConfigError {
            issues: vec![ConfigIssue {
                file: path.to_path_buf(),
                line,
                column,
                field: String::new(),
                message: e.message().trim().to_string(),
            }],
        }
    })
}
