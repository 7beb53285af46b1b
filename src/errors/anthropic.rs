//! The Anthropic-shaped writer of [`ApiError`], for the Messages endpoints: the same errors,
//! statuses and headers as the OpenAI writer, in the body the Anthropic SDKs parse:
//! `{"type":"error","error":{"type":…,"message":…}}`.

use bytes::Bytes;

use super::ApiError;
use crate::upstream_error::anthropic::{anthropic_error_body, type_for_status};

impl ApiError {
    /// Anthropic's `error.type`. Decided per variant (no catch-all arm); variants whose status
    /// is chosen at run time take the type of that status.
    pub fn anthropic_type(&self) -> &'static str {
        match self {
            ApiError::BodyTooLarge { .. } | ApiError::BodyTooLargeStreaming { .. } => {
                "request_too_large"
            }
            ApiError::InvalidBody(_)
            | ApiError::OllamaRequest(_)
            | ApiError::InvalidRequestFraming(_)
            | ApiError::MethodNotAllowed { .. }
            | ApiError::ClientBodyTimeout => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::RateLimited(_) => "rate_limit_error",
            ApiError::ModelNotFound { .. }
            | ApiError::UnknownPath { .. }
            | ApiError::EndpointNotServed { .. } => "not_found_error",
            ApiError::NoReplicaAvailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::BodyBudgetBusy => "overloaded_error",
            ApiError::UpstreamTimeout { .. } => "timeout_error",
            ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamFailed { .. }
            | ApiError::Internal(_) => "api_error",
            ApiError::StoredResponse(e) => type_for_status(e.status()),
            ApiError::RuleDenied { status, .. } | ApiError::UpstreamEmptyError { status, .. } => {
                type_for_status(*status)
            }
        }
    }

    /// The Anthropic-shaped JSON body.
    pub fn to_anthropic_json(&self) -> Bytes {
        anthropic_error_body(self.anthropic_type(), &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_anthropic_json()).unwrap()
    }

    #[test]
    fn shapes_and_statuses_match_anthropic() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                ApiError::Unauthorized(AuthError::Unknown),
                401,
                "authentication_error",
            ),
            (
                ApiError::ModelNotFound { model: "m".into() },
                404,
                "not_found_error",
            ),
            (
                ApiError::NoReplicaAvailable {
                    model: "m".into(),
                    cluster: "c".into(),
                },
                503,
                "overloaded_error",
            ),
            (
                ApiError::BodyTooLarge { size: 2, limit: 1 },
                413,
                "request_too_large",
            ),
            (
                ApiError::InvalidBody(crate::routing::body::BodyError::Empty),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::UpstreamTimeout { model: "m".into() },
                504,
                "timeout_error",
            ),
            (ApiError::Internal("x".into()), 500, "api_error"),
            (
                ApiError::UpstreamEmptyError {
                    model: "m".into(),
                    status: 529,
                },
                529,
                "overloaded_error",
            ),
        ];
        for (error, status, kind) in cases {
            let v = body(&error);
            assert_eq!(error.status(), status, "{error:?}");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind, "{error:?}");
            assert_eq!(v["error"]["message"], error.to_string());
            assert_eq!(v.as_object().unwrap().len(), 2);
        }
    }

    #[test]
    fn endpoint_not_served_names_model_and_endpoint() {
        let e = ApiError::EndpointNotServed {
            model: "mistral-7b".into(),
            endpoint: "/v1/messages",
            cluster: "trtllm-b".into(),
            flavour: "trtllm",
        };
        let message = body(&e)["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("`mistral-7b`") && message.contains("/v1/messages"));
        assert_eq!(e.status(), 404);
    }
}
