//! The API key domain type, its public (secret-free) view, and the shared field rules used by
//! both the keys file and the admin API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::secret::{KeyHash, SECRET_PREFIX};
use crate::ratelimit::KeyLimits;

/// One API key as the gateway uses it. Holds the hash only; the secret is never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Unique, `[A-Za-z0-9._-]+`; names the key in logs, metrics, limits and usage.
    pub name: String,
    pub hash: KeyHash,
    /// The first characters after `tg-`, for humans; absent for hand-added keys.
    pub prefix: Option<String>,
    pub team: Option<String>,
    pub tags: Vec<String>,
    /// Model aliases this key may use; empty or `["*"]` = all.
    pub models: Vec<String>,
    pub enabled: bool,
    /// Unix seconds; the key is refused from this instant on.
    pub expires_at: Option<u64>,
    pub limits: KeyLimits,
    /// Unix seconds.
    pub created_at: Option<u64>,
    /// Admission-queue priority of the key's requests (default 0; higher goes first); a
    /// rule's `priority` overrides it.
    pub priority: i32,
}

impl ApiKey {
    pub fn allows_model(&self, alias: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == "*" || m == alias)
    }

    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expires_at.is_some_and(|at| now_unix >= at)
    }

    pub fn status(&self, now_unix: u64) -> KeyStatus {
        if !self.enabled {
            KeyStatus::Disabled
        } else if self.is_expired(now_unix) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    /// What the admin API shows: everything but the hash.
    pub fn view(&self, now_unix: u64) -> KeyView {
        KeyView {
            name: self.name.clone(),
            prefix: self.prefix.as_ref().map(|p| format!("{SECRET_PREFIX}{p}")),
            team: self.team.clone(),
            tags: self.tags.clone(),
            models: self.models.clone(),
            enabled: self.enabled,
            status: self.status(now_unix),
            expires_at: self.expires_at.map(format_rfc3339),
            created_at: self.created_at.map(format_rfc3339),
            priority: self.priority,
            limits: self.limits,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
}

/// The serialisable public view of a key for admin list/get responses: no hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyView {
    pub name: String,
    /// E.g. `tg-3kTqa9Zx`: enough to recognise a key, far too little to use it.
    pub prefix: Option<String>,
    pub team: Option<String>,
    pub tags: Vec<String>,
    pub models: Vec<String>,
    pub enabled: bool,
    pub status: KeyStatus,
    pub expires_at: Option<String>,
    pub created_at: Option<String>,
    /// Admission-queue priority (default 0).
    pub priority: i32,
    pub limits: KeyLimits,
}

/// Latest instant humantime can format (9999-12-31T23:59:59Z).
const MAX_UNIX: u64 = 253_402_300_799;

/// Parses an RFC 3339 UTC time (`2026-01-01T00:00:00Z`, fractions allowed and dropped).
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 UTC time such as 2026-01-01T00:00:00Z");
    let t = humantime::parse_rfc3339(text.trim()).map_err(|_| bad())?;
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_secs();
    Ok(secs.min(MAX_UNIX))
}

pub fn format_rfc3339(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.min(MAX_UNIX));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The wall clock in unix seconds, for callers at the edge (the proxy, the CLI).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// Field rules. Each returns the message for a `FieldError` / file issue.

pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{name}` is not a valid key name (use letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

pub(crate) fn check_label(value: &str) -> Result<(), String> {
    if value.trim().is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
        return Err(
            "must be 1 to 128 characters, not blank, without control characters".to_string(),
        );
    }
    Ok(())
}

pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > super::secret::PREFIX_CHARS
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "must be 1 to {} letters or digits (the start of the key after `tg-`, never the \
             whole key)",
            super::secret::PREFIX_CHARS
        ));
    }
    Ok(())
}

/// Every set limit must be positive: a 0 would refuse everything, which is what `enabled =
/// false` is for; leaving a limit out means unlimited.
pub(crate) fn check_limit(value: u64) -> Result<(), String> {
    if value == 0 {
        return Err(
            "must be greater than 0 (leave it out for no limit; use `enabled = false` \
                    to block a key)"
                .to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKey {
        ApiKey {
            priority: 0,
            name: "ci-bot".into(),
            hash: KeyHash::of("tg-x"),
            prefix: Some("abcdefgh".into()),
            team: None,
            tags: vec![],
            models: vec![],
            enabled: true,
            expires_at: Some(1_767_225_600),
            limits: KeyLimits::default(),
            created_at: None,
        }
    }

    #[test]
    fn model_allow_list() {
        let mut k = key();
        assert!(k.allows_model("anything"));
        k.models = vec!["*".into()];
        assert!(k.allows_model("anything"));
        k.models = vec!["llama".into(), "qwen".into()];
        assert!(k.allows_model("qwen"));
        assert!(!k.allows_model("gpt-4"));
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Ok(1_767_225_600));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00.750Z"), Ok(1_767_225_600));
        assert_eq!(format_rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert!(parse_rfc3339("2026-01-01").is_err());
        assert!(parse_rfc3339("2026-01-01T00:00:00+02:00").is_err());
        assert!(parse_rfc3339("tomorrow").unwrap_err().contains("RFC 3339"));
        assert_eq!(format_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn status_and_view() {
        let mut k = key();
        assert_eq!(k.status(1_767_225_599), KeyStatus::Active);
        assert_eq!(k.status(1_767_225_600), KeyStatus::Expired);
        k.enabled = false;
        assert_eq!(k.status(0), KeyStatus::Disabled);
        let v = serde_json::to_value(k.view(0)).unwrap();
        assert_eq!(v["prefix"], "tg-abcdefgh");
        assert_eq!(v["expires_at"], "2026-01-01T00:00:00Z");
        assert_eq!(v["status"], "disabled");
        assert!(v.get("hash").is_none());
        assert!(!v.to_string().contains("sha256"));
    }

    #[test]
    fn field_rules() {
        assert!(check_name("ci-bot.v2_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_prefix("abcdefgh").is_ok());
        assert!(check_prefix("abcdefghi").is_err());
        assert!(check_label(" ").is_err());
        assert!(check_limit(0).is_err());
    }
}
