//! Requests to create or change a key (admin API bodies, CLI flags) and their validation into
//! field-level errors a 400 can carry.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::file::KeysFileError;
use super::key::{check_label, check_limit, check_name, parse_rfc3339, ApiKey};
use super::secret::NewSecret;
use crate::ratelimit::KeyLimits;

/// `POST /admin/keys` body / `tokengate key new` flags.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Aliases; empty or `["*"]` = all.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: KeyLimits,
    /// RFC 3339 UTC, e.g. `2026-01-01T00:00:00Z`; must be in the future.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Admission-queue priority (higher first; a rule's `priority` overrides it).
    #[serde(default)]
    pub priority: i32,
}

fn yes() -> bool {
    true
}

impl NewKey {
    /// An enabled key with no restrictions.
    pub fn named(name: impl Into<String>) -> Self {
        NewKey {
            priority: 0,
            name: name.into(),
            team: None,
            tags: Vec::new(),
            models: Vec::new(),
            limits: KeyLimits::default(),
            expires_at: None,
            enabled: true,
        }
    }

    /// The key to store: this request's fields, a fresh secret's hash and prefix, the expiry
    /// `validate_new` parsed, and the creation time. One place for the single-node keys file and
    /// the fleet's Redis store.
    pub fn into_key(self, secret: &NewSecret, expires_at: Option<u64>, now_unix: u64) -> ApiKey {
        ApiKey {
            priority: self.priority,
            name: self.name,
            hash: secret.hash,
            prefix: Some(secret.prefix.clone()),
            team: self.team,
            tags: self.tags,
            models: self.models,
            enabled: self.enabled,
            expires_at,
            limits: self.limits,
            created_at: Some(now_unix),
        }
    }
}

/// `PATCH /admin/keys/{name}` body. A missing field is unchanged; for the optional ones,
/// `null` clears (`"expires_at": null` makes the key never expire).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default, deserialize_with = "set_or_clear")]
    pub team: Option<Option<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "set_or_clear")]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
}

/// Per-limit changes: missing = unchanged, `null` = remove the limit, a number = set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, deserialize_with = "set_or_clear")]
    pub requests_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "set_or_clear")]
    pub tokens_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "set_or_clear")]
    pub tokens_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "set_or_clear")]
    pub max_concurrent: Option<Option<u32>>,
}

/// Tells `null` (Some(None)) from a missing field (None, via `default`).
fn set_or_clear<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One invalid field, for a 400 listing them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// E.g. `limits.tokens_per_minute`, `models[1]`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    /// 400: every invalid field.
    #[error("invalid API key settings: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// 404.
    #[error("API key `{0}` does not exist")]
    NotFound(String),
    /// 409: the name is taken.
    #[error("an API key named `{0}` already exists")]
    Conflict(String),
    /// 500: the keys file could not be read or written; nothing was changed.
    #[error("keys file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// 500: the keys file on disk is invalid (hand-edited?); nothing was changed.
    #[error("{0}")]
    File(#[from] KeysFileError),
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl KeyAdminError {
    pub fn status(&self) -> u16 {
        match self {
            KeyAdminError::Invalid(_) => 400,
            KeyAdminError::NotFound(_) => 404,
            KeyAdminError::Conflict(_) => 409,
            KeyAdminError::Io { .. } | KeyAdminError::File(_) => 500,
        }
    }

    /// The field errors of an `Invalid`, empty otherwise.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            KeyAdminError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

/// Collects field errors for one request.
#[derive(Default)]
pub(crate) struct Fields(Vec<FieldError>);

impl Fields {
    fn rule(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.0.push(FieldError {
                field: field.into(),
                message,
            });
        }
    }

    fn labels(&mut self, field: &str, values: &[String]) {
        for (i, v) in values.iter().enumerate() {
            self.rule(format!("{field}[{i}]"), check_label(v));
        }
    }

    fn limits(&mut self, l: &KeyLimits) {
        let all = [
            ("limits.requests_per_minute", l.requests_per_minute),
            ("limits.tokens_per_minute", l.tokens_per_minute),
            ("limits.tokens_per_day", l.tokens_per_day),
            ("limits.max_concurrent", l.max_concurrent.map(u64::from)),
        ];
        for (field, value) in all {
            if let Some(v) = value {
                self.rule(field, check_limit(v));
            }
        }
    }

    fn expiry(&mut self, value: Option<&str>, now_unix: u64) -> Option<u64> {
        let text = value?;
        match parse_rfc3339(text) {
            Ok(at) if at <= now_unix => {
                self.rule("expires_at", Err(format!("`{text}` is not in the future")));
                None
            }
            Ok(at) => Some(at),
            Err(message) => {
                self.rule("expires_at", Err(message));
                None
            }
        }
    }

    fn finish(self) -> Result<(), KeyAdminError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(KeyAdminError::Invalid(self.0))
        }
    }
}

/// Validates a `NewKey`; returns the expiry as unix seconds.
pub(crate) fn validate_new(new: &NewKey, now_unix: u64) -> Result<Option<u64>, KeyAdminError> {
    let mut f = Fields::default();
    f.rule("name", check_name(&new.name));
    if let Some(team) = &new.team {
        f.rule("team", check_label(team));
    }
    f.labels("tags", &new.tags);
    f.labels("models", &new.models);
    f.limits(&new.limits);
    let expires_at = f.expiry(new.expires_at.as_deref(), now_unix);
    f.finish()?;
    Ok(expires_at)
}

/// Applies a patch to a copy of `key`, validating every changed field.
pub(crate) fn apply_patch(
    key: &ApiKey,
    patch: &KeyPatch,
    now_unix: u64,
) -> Result<ApiKey, KeyAdminError> {
    let mut f = Fields::default();
    let mut out = key.clone();
    if let Some(team) = &patch.team {
        if let Some(t) = team {
            f.rule("team", check_label(t));
        }
        out.team = team.clone();
    }
    if let Some(tags) = &patch.tags {
        f.labels("tags", tags);
        out.tags = tags.clone();
    }
    if let Some(models) = &patch.models {
        f.labels("models", models);
        out.models = models.clone();
    }
    if let Some(enabled) = patch.enabled {
        out.enabled = enabled;
    }
    if let Some(expires_at) = &patch.expires_at {
        out.expires_at = f.expiry(expires_at.as_deref(), now_unix);
    }
    if let Some(l) = &patch.limits {
        let set = |current: &mut Option<u64>, change: Option<Option<u64>>| {
            if let Some(v) = change {
                *current = v;
            }
        };
        set(&mut out.limits.requests_per_minute, l.requests_per_minute);
        set(&mut out.limits.tokens_per_minute, l.tokens_per_minute);
        set(&mut out.limits.tokens_per_day, l.tokens_per_day);
        if let Some(v) = l.max_concurrent {
            out.limits.max_concurrent = v;
        }
        f.limits(&out.limits);
    }
    f.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::KeyHash;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn new_key_json_defaults_and_unknown_fields() {
        let k: NewKey = serde_json::from_str(r#"{"name":"ci-bot"}"#).unwrap();
        assert_eq!(k, NewKey::named("ci-bot"));
        assert!(k.enabled);
        assert!(serde_json::from_str::<NewKey>(r#"{"name":"a","nmae":"b"}"#).is_err());
    }

    #[test]
    fn new_key_field_errors_are_all_listed() {
        let k = NewKey {
            priority: 0,
            team: Some(" ".into()),
            models: vec!["ok".into(), "".into()],
            limits: KeyLimits {
                tokens_per_minute: Some(0),
                max_concurrent: Some(0),
                ..KeyLimits::default()
            },
            expires_at: Some("2020-01-01T00:00:00Z".into()),
            ..NewKey::named("bad name")
        };
        let e = validate_new(&k, NOW).unwrap_err();
        assert_eq!(e.status(), 400);
        let fields: Vec<&str> = e.field_errors().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "team",
                "models[1]",
                "limits.tokens_per_minute",
                "limits.max_concurrent",
                "expires_at"
            ]
        );
        assert!(e
            .to_string()
            .contains("expires_at: `2020-01-01T00:00:00Z` is not in the future"));
    }

    #[test]
    fn patch_distinguishes_missing_null_and_value() {
        let p: KeyPatch = serde_json::from_str(
            r#"{"team":null,"limits":{"tokens_per_minute":5000,"max_concurrent":null}}"#,
        )
        .unwrap();
        assert_eq!(p.team, Some(None));
        assert_eq!(p.expires_at, None);
        let l = p.limits.clone().unwrap();
        assert_eq!(l.tokens_per_minute, Some(Some(5000)));
        assert_eq!(l.max_concurrent, Some(None));
        assert_eq!(l.requests_per_minute, None);

        let key = ApiKey {
            priority: 0,
            name: "k".into(),
            hash: KeyHash::of("tg-k"),
            prefix: None,
            team: Some("t".into()),
            tags: vec![],
            models: vec![],
            enabled: true,
            expires_at: Some(NOW + 10),
            limits: KeyLimits {
                requests_per_minute: Some(60),
                max_concurrent: Some(2),
                ..KeyLimits::default()
            },
            created_at: None,
        };
        let out = apply_patch(&key, &p, NOW).unwrap();
        assert_eq!(out.team, None);
        assert_eq!(out.expires_at, Some(NOW + 10), "missing = unchanged");
        assert_eq!(out.limits.requests_per_minute, Some(60));
        assert_eq!(out.limits.tokens_per_minute, Some(5000));
        assert_eq!(out.limits.max_concurrent, None);

        let bad: KeyPatch =
            serde_json::from_str(r#"{"expires_at":"soon","limits":{"tokens_per_day":0}}"#).unwrap();
        let e = apply_patch(&key, &bad, NOW).unwrap_err();
        assert_eq!(e.field_errors().len(), 2, "{e}");
    }
}
