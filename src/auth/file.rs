//! The keys file: a TOML `[[keys]]` array, read with every problem reported by file, line and
//! field (like the config), and written back in the same shape.
//!
//! ```toml
//! [[keys]]
//! name = "ci-bot"
//! hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! prefix = "3kTqa9Zx"
//! team = "platform"
//! tags = ["ci"]
//! models = ["llama-3.1-8b"]       # empty or ["*"] = every model
//! enabled = true
//! expires_at = "2026-01-01T00:00:00Z"
//! created_at = "2025-06-01T12:00:00Z"
//! priority = 0                    # admission-queue priority; higher first (default 0)
//!
//! [keys.limits]
//! requests_per_minute = 60
//! tokens_per_minute = 10000
//! tokens_per_day = 1000000
//! max_concurrent = 4
//! ```

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::key::{
    check_label, check_limit, check_name, check_prefix, format_rfc3339, parse_rfc3339, ApiKey,
};
use super::secret::KeyHash;
use crate::ratelimit::KeyLimits;

/// One problem in a keys file: the shared diagnostics shape.
pub use crate::diagnostics::FileIssue as KeysFileIssue;

/// Every problem found in one read; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysFileError {
    pub issues: Vec<KeysFileIssue>,
}

impl KeysFileError {
    pub(crate) fn unreadable(path: &Path, e: &std::io::Error) -> Self {
        KeysFileError {
            issues: vec![KeysFileIssue::whole_file(
                path,
                format!("cannot read keys file: {e}"),
            )],
        }
    }
}

impl fmt::Display for KeysFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::diagnostics::write_rejected(f, "keys file", &self.issues)
    }
}

impl std::error::Error for KeysFileError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: Spanned<String>,
    hash: Spanned<String>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    team: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    #[serde(default)]
    models: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    expires_at: Option<Spanned<String>>,
    #[serde(default)]
    created_at: Option<Spanned<String>>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    limits: LimitsEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsEntry {
    #[serde(default)]
    requests_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    tokens_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    tokens_per_day: Option<Spanned<u64>>,
    #[serde(default)]
    max_concurrent: Option<Spanned<u32>>,
}

fn yes() -> bool {
    true
}

/// Reads and validates a keys file.
pub fn load(path: &Path) -> Result<Vec<ApiKey>, KeysFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(KeysFileError::unreadable(path, &e)),
    }
}

/// Validates keys-file text; `path` only names the source in messages.
pub fn parse(text: &str, path: &Path) -> Result<Vec<ApiKey>, KeysFileError> {
    let mut v = Validator {
        text,
        path,
        issues: Vec::new(),
    };
    let raw: KeysFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            v.issues.push(v.issue(span, String::new(), message));
            return Err(KeysFileError { issues: v.issues });
        }
    };
    let keys = v.keys(raw.keys);
    if v.issues.is_empty() {
        Ok(keys)
    } else {
        Err(KeysFileError { issues: v.issues })
    }
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    issues: Vec<KeysFileIssue>,
}

impl Validator<'_> {
    fn issue(&self, span: Range<usize>, field: String, message: String) -> KeysFileIssue {
        KeysFileIssue::at_span(self.path, self.text, span, field, message)
    }

    fn check<T>(&mut self, value: &Spanned<T>, field: String, rule: Result<(), String>) -> bool {
        match rule {
            Ok(()) => true,
            Err(message) => {
                let issue = self.issue(value.span(), field, message);
                self.issues.push(issue);
                false
            }
        }
    }

    fn time(&mut self, value: &Option<Spanned<String>>, field: String) -> Option<u64> {
        let value = value.as_ref()?;
        match parse_rfc3339(value.get_ref()) {
            Ok(t) => Some(t),
            Err(message) => {
                self.check(value, field, Err(message));
                None
            }
        }
    }

    fn limit<T: Copy + Into<u64>>(&mut self, value: &Option<Spanned<T>>, field: String) {
        if let Some(v) = value {
            self.check(v, field, check_limit((*v.get_ref()).into()));
        }
    }

    fn keys(&mut self, raw: Vec<KeyEntry>) -> Vec<ApiKey> {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, e) in raw.into_iter().enumerate() {
            let at = |f: &str| format!("keys[{i}].{f}");
            let name = e.name.get_ref().clone();
            if self.check(&e.name, at("name"), check_name(&name)) && !names.insert(name.clone()) {
                self.check(
                    &e.name,
                    at("name"),
                    Err(format!("duplicate key name `{name}`")),
                );
            }
            let hash = match e.hash.get_ref().parse::<KeyHash>() {
                Ok(h) => {
                    if !hashes.insert(h) {
                        self.check(
                            &e.hash,
                            at("hash"),
                            Err("duplicate hash: another key has the same secret".to_string()),
                        );
                    }
                    h
                }
                Err(message) => {
                    self.check(&e.hash, at("hash"), Err(message));
                    KeyHash([0; 32])
                }
            };
            if let Some(p) = &e.prefix {
                self.check(p, at("prefix"), check_prefix(p.get_ref()));
            }
            if let Some(t) = &e.team {
                self.check(t, at("team"), check_label(t.get_ref()));
            }
            for (j, t) in e.tags.iter().enumerate() {
                self.check(t, format!("keys[{i}].tags[{j}]"), check_label(t.get_ref()));
            }
            for (j, m) in e.models.iter().enumerate() {
                self.check(
                    m,
                    format!("keys[{i}].models[{j}]"),
                    check_label(m.get_ref()),
                );
            }
            let expires_at = self.time(&e.expires_at, at("expires_at"));
            let created_at = self.time(&e.created_at, at("created_at"));
            let l = &e.limits;
            self.limit(&l.requests_per_minute, at("limits.requests_per_minute"));
            self.limit(&l.tokens_per_minute, at("limits.tokens_per_minute"));
            self.limit(&l.tokens_per_day, at("limits.tokens_per_day"));
            self.limit(&l.max_concurrent, at("limits.max_concurrent"));
            let inner = |v: &Option<Spanned<u64>>| v.as_ref().map(|s| *s.get_ref());
            out.push(ApiKey {
                name,
                hash,
                prefix: e.prefix.map(Spanned::into_inner),
                team: e.team.map(Spanned::into_inner),
                tags: e.tags.into_iter().map(Spanned::into_inner).collect(),
                models: e.models.into_iter().map(Spanned::into_inner).collect(),
                enabled: e.enabled,
                expires_at,
                limits: KeyLimits {
                    requests_per_minute: inner(&l.requests_per_minute),
                    tokens_per_minute: inner(&l.tokens_per_minute),
                    tokens_per_day: inner(&l.tokens_per_day),
                    max_concurrent: l.max_concurrent.as_ref().map(|s| *s.get_ref()),
                },
                created_at,
                priority: e.priority,
            });
        }
        out
    }
}

#[derive(Serialize)]
struct KeysFileOut<'a> {
    keys: Vec<KeyEntryOut<'a>>,
}

/// Field order matters: TOML needs plain values before the `limits` sub-table.
#[derive(Serialize)]
struct KeyEntryOut<'a> {
    name: &'a str,
    hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    models: &'a [String],
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(skip_serializing_if = "KeyLimits::is_empty")]
    limits: &'a KeyLimits,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

const HEADER: &str = "\
# tokengate API keys. Managed by `tokengate key …` and the admin API; hand edits are fine
# (then reload). Only SHA-256 hashes of the secrets are stored here, never the secrets.

";

/// The file text for a set of keys, in the order given.
pub fn render<'a>(keys: impl IntoIterator<Item = &'a ApiKey>) -> String {
    format!("{HEADER}{}", entries(keys))
}

/// One key as a keys-file entry (a `[[keys]]` table, no header): also the record fleet mode
/// stores in Redis, so both stores share one shape and one validation ([`parse_entry`]).
pub fn render_entry(key: &ApiKey) -> String {
    entries([key])
}

/// Reads one key written by [`render_entry`]; `source` names it in messages.
pub fn parse_entry(text: &str, source: &Path) -> Result<ApiKey, KeysFileError> {
    let mut keys = parse(text, source)?;
    match (keys.pop(), keys.is_empty()) {
        (Some(key), true) => Ok(key),
        _ => Err(KeysFileError {
            issues: vec![KeysFileIssue::whole_file(
                source,
                "expected exactly one [[keys]] entry".to_string(),
            )],
        }),
    }
}

fn entries<'a>(keys: impl IntoIterator<Item = &'a ApiKey>) -> String {
    let out = KeysFileOut {
        keys: keys
            .into_iter()
            .map(|k| KeyEntryOut {
                name: &k.name,
                hash: k.hash.to_string(),
                prefix: k.prefix.as_deref(),
                team: k.team.as_deref(),
                tags: &k.tags,
                models: &k.models,
                enabled: k.enabled,
                expires_at: k.expires_at.map(format_rfc3339),
                created_at: k.created_at.map(format_rfc3339),
                priority: k.priority,
                limits: &k.limits,
            })
            .collect(),
    };
    // Plain strings, bools, integers and tables always serialise; an error here would be a
    // bug in this struct, and writing an empty file instead would lose every key.
    #[allow(clippy::panic)] // a bug in this struct, never input (see above)
    match toml::to_string(&out) {
        Ok(body) => body,
        Err(e) => panic!("keys file serialisation failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const H2: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn p(text: &str) -> Result<Vec<ApiKey>, KeysFileError> {
        parse(text, Path::new("keys.toml"))
    }

    #[test]
    fn parses_a_full_entry_and_defaults() {
        let text = format!(
            r#"
[[keys]]
name = "ci-bot"
hash = "{H1}"
prefix = "3kTqa9Zx"
team = "platform"
tags = ["ci", "nightly"]
models = ["llama"]
expires_at = "2026-01-01T00:00:00Z"
created_at = "2025-06-01T12:00:00Z"
priority = 7

[keys.limits]
requests_per_minute = 60
tokens_per_minute = 10000
tokens_per_day = 1000000
max_concurrent = 4

[[keys]]
name = "alice"
hash = "{H2}"
"#
        );
        let keys = p(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let k = &keys[0];
        assert_eq!(k.name, "ci-bot");
        assert_eq!(k.hash.to_string(), H1);
        assert_eq!(k.expires_at, Some(1_767_225_600));
        assert_eq!((k.priority, keys[1].priority), (7, 0));
        let again = parse(&render(&keys), Path::new("again.toml")).unwrap();
        assert_eq!(again[0].priority, 7, "written back");
        assert_eq!(k.limits.max_concurrent, Some(4));
        assert_eq!(k.limits.tokens_per_day, Some(1_000_000));
        assert!(keys[1].enabled);
        assert!(keys[1].models.is_empty());
        assert_eq!(keys[1].limits, KeyLimits::default());
        // Written back and read again: the same keys.
        let again = p(&render(&keys)).unwrap();
        assert_eq!(again, keys);
    }

    #[test]
    fn empty_file_is_no_keys() {
        assert!(p("").unwrap().is_empty());
        assert!(p(HEADER).unwrap().is_empty());
        assert!(p(&render([])).unwrap().is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_line_and_field() {
        let text = format!(
            r#"[[keys]]
name = "ci bot"
hash = "sha256:nothex"

[[keys]]
name = "a"
hash = "{H1}"
expires_at = "next tuesday"
[keys.limits]
tokens_per_minute = 0

[[keys]]
name = "a"
hash = "{H1}"
prefix = "tg-3kTqa9Zx0123"
"#
        );
        let e = p(&text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("keys file rejected (7 errors):"), "{msg}");
        for want in [
            "keys.toml:2:8: keys[0].name: `ci bot` is not a valid key name",
            "keys.toml:3:8: keys[0].hash: expected `sha256:`",
            "keys.toml:8:14: keys[1].expires_at: `next tuesday` is not an RFC 3339",
            "keys.toml:10:21: keys[1].limits.tokens_per_minute: must be greater than 0",
            "keys.toml:13:8: keys[2].name: duplicate key name `a`",
            "keys.toml:14:8: keys[2].hash: duplicate hash",
            "keys.toml:15:10: keys[2].prefix: must be 1 to 8",
        ] {
            assert!(msg.contains(want), "missing {want:?} in\n{msg}");
        }
    }

    #[test]
    fn unknown_field_and_syntax_errors_have_a_line() {
        let text = format!("[[keys]]\nname = \"a\"\nhash = \"{H1}\"\nenable = false\n");
        let e = p(&text).unwrap_err();
        assert_eq!(e.issues.len(), 1);
        assert_eq!(e.issues[0].line, Some(4), "{e}");
        assert!(e.to_string().contains("enable"), "{e}");
        let e = p("[[keys]\nname=").unwrap_err();
        assert!(e.issues[0].line.is_some());
        let e = p(&format!(
            "[[keys]]\nname = \"a\"\nhash = \"{H1}\"\n[keys.limits]\nrpm = 1\n"
        ))
        .unwrap_err();
        assert_eq!(e.issues[0].line, Some(5), "{e}");
    }

    #[test]
    fn one_entry_round_trips_and_more_or_fewer_are_refused() {
        let keys = p(&format!(
            "[[keys]]\nname = \"a\"\nhash = \"{H1}\"\ntags = [\"x\"]\n[keys.limits]\nrequests_per_minute = 6\n\
             [[keys]]\nname = \"b\"\nhash = \"{H2}\"\n"
        ))
        .unwrap();
        let one = render_entry(&keys[0]);
        assert!(!one.contains('#'), "{one}");
        let back = parse_entry(&one, Path::new("redis")).unwrap();
        assert_eq!(back, keys[0]);
        let e = parse_entry(&render(&keys), Path::new("redis")).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        assert!(parse_entry("", Path::new("redis")).is_err());
        let bad = format!("[[keys]]\nname = \"a b\"\nhash = \"{H1}\"\n");
        let e = parse_entry(&bad, Path::new("redis")).unwrap_err();
        assert!(e.to_string().contains("keys[0]"), "{e}");
    }

    #[test]
    fn a_secret_in_the_hash_field_is_called_out() {
        let e = p("[[keys]]\nname = \"a\"\nhash = \"tg-abcdefghijklmnop\"\n").unwrap_err();
        assert!(e.to_string().contains("looks like a key secret"), "{e}");
    }
}
