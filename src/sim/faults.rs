//! Injectable faults: set by CLI flags at start-up and by `POST /sim/faults` at runtime.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every fault the simulator can inject. CLI flags use the kebab-case names,
/// the control API the snake_case field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Health endpoints answer "unavailable" (503, or 400 for triton-openai).
    #[arg(long)]
    pub health_failing: bool,
    /// Every completion / embedding request answers this status in the flavour's error shape.
    #[arg(long)]
    pub error_status: Option<u16>,
    /// Injected errors carry an empty body (vLLM 0.11 engine death on a 500).
    #[arg(long)]
    pub empty_error_body: bool,
    /// Streams: abort the connection after this many content tokens (no finish/usage/[DONE]).
    #[arg(long)]
    pub cut_after_tokens: Option<u64>,
    /// Streams: after this many tokens send vLLM's mid-stream error event, then [DONE].
    #[arg(long)]
    pub midstream_error_after: Option<u64>,
    /// Delay before the response header of completion / embedding requests.
    #[arg(long)]
    pub stall_ms: Option<u64>,
    /// Start-up only: wait this long before binding the listener (like loading weights).
    #[arg(long)]
    pub slow_start_ms: Option<u64>,
    /// The next N completion / embedding requests fail with `error_status` (503 if unset).
    #[arg(long, default_value_t = 0)]
    pub fail_next: u64,
}

/// Why a fault update was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultUpdateError {
    #[error("fault update must be a JSON object")]
    NotAnObject,
    #[error("unknown fault field `{0}`")]
    UnknownField(String),
    #[error("invalid fault value: {0}")]
    InvalidValue(String),
}

impl Faults {
    /// Applies a partial update: only the fields present in `patch` change.
    /// Unknown fields and ill-typed values are refused and leave `self` untouched.
    pub fn apply_patch(&mut self, patch: &Value) -> Result<(), FaultUpdateError> {
        let Value::Object(changes) = patch else {
            return Err(FaultUpdateError::NotAnObject);
        };
        let mut merged = serde_json::to_value(&*self)
            .map_err(|e| FaultUpdateError::InvalidValue(e.to_string()))?;
        let Value::Object(fields) = &mut merged else {
            return Err(FaultUpdateError::NotAnObject);
        };
        for (name, value) in changes {
            match fields.get_mut(name) {
                Some(slot) => *slot = value.clone(),
                None => return Err(FaultUpdateError::UnknownField(name.clone())),
            }
        }
        let updated: Faults = serde_json::from_value(merged)
            .map_err(|e| FaultUpdateError::InvalidValue(e.to_string()))?;
        if let Some(status) = updated.error_status {
            if !(100..=999).contains(&status) {
                return Err(FaultUpdateError::InvalidValue(format!(
                    "error_status {status} is not an HTTP status"
                )));
            }
        }
        *self = updated;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partial_update_changes_only_given_fields() {
        let mut faults = Faults {
            stall_ms: Some(5),
            ..Faults::default()
        };
        let patch = json!({"error_status": 500, "empty_error_body": true});
        assert_eq!(faults.apply_patch(&patch), Ok(()));
        assert_eq!(faults.error_status, Some(500));
        assert!(faults.empty_error_body);
        assert_eq!(faults.stall_ms, Some(5));
        assert_eq!(faults.apply_patch(&json!({"stall_ms": null})), Ok(()));
        assert_eq!(faults.stall_ms, None);
    }

    #[test]
    fn unknown_or_bad_fields_are_refused_atomically() {
        let mut faults = Faults::default();
        let unknown = json!({"fail_next": 2, "bogus": 1});
        assert_eq!(
            faults.apply_patch(&unknown),
            Err(FaultUpdateError::UnknownField("bogus".into()))
        );
        assert_eq!(faults, Faults::default());
        assert!(faults.apply_patch(&json!({"fail_next": "x"})).is_err());
        assert!(faults.apply_patch(&json!({"error_status": 42})).is_err());
        assert!(faults.apply_patch(&json!([1])).is_err());
        assert_eq!(faults, Faults::default());
    }
}
