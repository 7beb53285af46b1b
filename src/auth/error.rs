//! Why a request's API key was refused. Messages never contain any part of the presented
//! secret (it would end up in client logs and screenshots); they name the key only once it is
//! known to be one of ours, when the caller holds its secret anyway.

use super::key::format_rfc3339;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key \
         header."
    )]
    Missing,
    #[error("Incorrect API key provided. Ask your gateway administrator for a valid key.")]
    Unknown,
    #[error("API key `{name}` is disabled.")]
    Disabled { name: String },
    #[error("API key `{name}` expired at {}.", format_rfc3339(*at))]
    Expired {
        name: String,
        /// Unix seconds.
        at: u64,
    },
}

impl AuthError {
    /// Always 401: the SDKs raise `AuthenticationError` for it.
    pub fn status(&self) -> u16 {
        401
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        "invalid_request_error"
    }

    /// OpenAI's `error.code`: `invalid_api_key` as OpenAI sends for a missing or wrong key;
    /// distinct codes for ours that are switched off, so clients can tell "ask for a new key"
    /// from "fix your key".
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Unknown => "invalid_api_key",
            AuthError::Disabled { .. } => "api_key_disabled",
            AuthError::Expired { .. } => "api_key_expired",
        }
    }

    /// For logs and metrics: `missing`, `unknown`, `disabled`, `expired`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Unknown => "unknown",
            AuthError::Disabled { .. } => "disabled",
            AuthError::Expired { .. } => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            AuthError::Disabled {
                name: "ci-bot".into()
            }
            .to_string(),
            "API key `ci-bot` is disabled."
        );
        let e = AuthError::Expired {
            name: "ci-bot".into(),
            at: 1_767_225_600,
        };
        assert_eq!(
            e.to_string(),
            "API key `ci-bot` expired at 2026-01-01T00:00:00Z."
        );
        assert_eq!(e.code(), "api_key_expired");
        assert_eq!(AuthError::Unknown.code(), "invalid_api_key");
        assert_eq!(AuthError::Missing.status(), 401);
    }
}
