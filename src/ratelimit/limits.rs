//! The limits themselves (plain data, shared by the keys file, the config and the limiter) and
//! the names of the individual limits a request can hit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Per API key. `None` = unlimited on that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl KeyLimits {
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }
}

/// Per model alias (set in the config next to the alias).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// For the whole gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// The same four dimensions for every scope, so one limiter code path serves all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SetLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub tpd: Option<u64>,
    pub max_concurrent: Option<u32>,
}

impl From<&KeyLimits> for SetLimits {
    fn from(l: &KeyLimits) -> Self {
        SetLimits {
            rpm: l.requests_per_minute,
            tpm: l.tokens_per_minute,
            tpd: l.tokens_per_day,
            max_concurrent: l.max_concurrent,
        }
    }
}

impl From<&ModelLimits> for SetLimits {
    fn from(l: &ModelLimits) -> Self {
        SetLimits {
            rpm: None,
            tpm: l.tokens_per_minute,
            tpd: None,
            max_concurrent: l.max_concurrent,
        }
    }
}

impl From<&GlobalLimits> for SetLimits {
    fn from(l: &GlobalLimits) -> Self {
        SetLimits {
            rpm: l.requests_per_minute,
            tpm: l.tokens_per_minute,
            tpd: None,
            max_concurrent: l.max_concurrent,
        }
    }
}

/// Whose limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Key,
    Model,
    Global,
}

/// Which measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    Concurrency,
}

impl Dimension {
    /// As OpenAI words it in its 429 messages.
    pub fn describe(self) -> &'static str {
        match self {
            Dimension::RequestsPerMinute => "requests per minute (RPM)",
            Dimension::TokensPerMinute => "tokens per minute (TPM)",
            Dimension::TokensPerDay => "tokens per day (TPD)",
            Dimension::Concurrency => "concurrent requests",
        }
    }

    /// The config / keys-file field that sets it.
    pub fn field(self) -> &'static str {
        match self {
            Dimension::RequestsPerMinute => "requests_per_minute",
            Dimension::TokensPerMinute => "tokens_per_minute",
            Dimension::TokensPerDay => "tokens_per_day",
            Dimension::Concurrency => "max_concurrent",
        }
    }
}

/// One individual limit a request can hit. Only the combinations that can be configured
/// exist, so a metric label or log field built from this is always meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    KeyRequestsPerMinute,
    KeyTokensPerMinute,
    KeyTokensPerDay,
    KeyConcurrency,
    ModelTokensPerMinute,
    ModelConcurrency,
    GlobalRequestsPerMinute,
    GlobalTokensPerMinute,
    GlobalConcurrency,
}

impl LimitKind {
    pub(crate) fn new(scope: Scope, dim: Dimension) -> LimitKind {
        use Dimension as D;
        use Scope as S;
        match (scope, dim) {
            (S::Key, D::RequestsPerMinute) => LimitKind::KeyRequestsPerMinute,
            (S::Key, D::TokensPerMinute) => LimitKind::KeyTokensPerMinute,
            (S::Key, D::TokensPerDay) => LimitKind::KeyTokensPerDay,
            (S::Key, D::Concurrency) => LimitKind::KeyConcurrency,
            (S::Model, D::Concurrency) => LimitKind::ModelConcurrency,
            (S::Model, _) => LimitKind::ModelTokensPerMinute,
            (S::Global, D::RequestsPerMinute) => LimitKind::GlobalRequestsPerMinute,
            (S::Global, D::Concurrency) => LimitKind::GlobalConcurrency,
            (S::Global, _) => LimitKind::GlobalTokensPerMinute,
        }
    }

    pub fn scope(self) -> Scope {
        match self {
            LimitKind::KeyRequestsPerMinute
            | LimitKind::KeyTokensPerMinute
            | LimitKind::KeyTokensPerDay
            | LimitKind::KeyConcurrency => Scope::Key,
            LimitKind::ModelTokensPerMinute | LimitKind::ModelConcurrency => Scope::Model,
            LimitKind::GlobalRequestsPerMinute
            | LimitKind::GlobalTokensPerMinute
            | LimitKind::GlobalConcurrency => Scope::Global,
        }
    }

    pub fn dimension(self) -> Dimension {
        match self {
            LimitKind::KeyRequestsPerMinute | LimitKind::GlobalRequestsPerMinute => {
                Dimension::RequestsPerMinute
            }
            LimitKind::KeyTokensPerMinute
            | LimitKind::ModelTokensPerMinute
            | LimitKind::GlobalTokensPerMinute => Dimension::TokensPerMinute,
            LimitKind::KeyTokensPerDay => Dimension::TokensPerDay,
            LimitKind::KeyConcurrency
            | LimitKind::ModelConcurrency
            | LimitKind::GlobalConcurrency => Dimension::Concurrency,
        }
    }

    /// Stable snake_case name for metric labels and logs, e.g. `key_tokens_per_minute`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::KeyRequestsPerMinute => "key_requests_per_minute",
            LimitKind::KeyTokensPerMinute => "key_tokens_per_minute",
            LimitKind::KeyTokensPerDay => "key_tokens_per_day",
            LimitKind::KeyConcurrency => "key_concurrency",
            LimitKind::ModelTokensPerMinute => "model_tokens_per_minute",
            LimitKind::ModelConcurrency => "model_concurrency",
            LimitKind::GlobalRequestsPerMinute => "global_requests_per_minute",
            LimitKind::GlobalTokensPerMinute => "global_tokens_per_minute",
            LimitKind::GlobalConcurrency => "global_concurrency",
        }
    }

    /// OpenAI's 429 `error.type`: `requests` or `tokens`.
    pub fn openai_type(self) -> &'static str {
        match self.dimension() {
            Dimension::RequestsPerMinute | Dimension::Concurrency => "requests",
            Dimension::TokensPerMinute | Dimension::TokensPerDay => "tokens",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_scope_and_dimension() {
        let all = [
            LimitKind::KeyRequestsPerMinute,
            LimitKind::KeyTokensPerMinute,
            LimitKind::KeyTokensPerDay,
            LimitKind::KeyConcurrency,
            LimitKind::ModelTokensPerMinute,
            LimitKind::ModelConcurrency,
            LimitKind::GlobalRequestsPerMinute,
            LimitKind::GlobalTokensPerMinute,
            LimitKind::GlobalConcurrency,
        ];
        for k in all {
            assert_eq!(LimitKind::new(k.scope(), k.dimension()), k);
        }
    }

    #[test]
    fn limits_reject_unknown_fields() {
        let ok: KeyLimits = toml::from_str("requests_per_minute = 60").unwrap();
        assert_eq!(ok.requests_per_minute, Some(60));
        assert!(toml::from_str::<KeyLimits>("requests_per_minuet = 60").is_err());
        assert!(toml::from_str::<ModelLimits>("requests_per_minute = 60").is_err());
    }
}
