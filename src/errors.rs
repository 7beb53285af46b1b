//! The one error type the proxy answers clients with, and its OpenAI-shaped JSON body; the
//! Anthropic-shaped writer for the Messages endpoints is in [`anthropic`].
//!
//! Every status, `type` and `code` lives in the exhaustive `match`es below (no catch-all arm),
//! so a new variant cannot ship without deciding how a client sees it.

pub mod anthropic;
pub mod ollama;

use bytes::Bytes;
use serde::Serialize;

use crate::auth::AuthError;
use crate::ratelimit::RateLimited;
use crate::routing::body::BodyError;
use crate::routing::RouteError;

/// An error answered to the client by tokengate itself (not relayed from a replica).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Request body is {size} bytes, over this gateway's limit of {limit} bytes.")]
    BodyTooLarge { size: u64, limit: u64 },
    #[error("Request body exceeds this gateway's limit of {limit} bytes.")]
    BodyTooLargeStreaming { limit: u64 },
    #[error("{0}")]
    InvalidBody(#[from] BodyError),
    /// An Ollama request the gateway cannot translate.
    #[error("{0}")]
    OllamaRequest(#[from] crate::ollama::RequestError),
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("{}", .0.message)]
    RateLimited(Box<RateLimited>),
    #[error("The model `{model}` does not exist or you do not have access to it.")]
    ModelNotFound { model: String },
    #[error("Method {method} is not allowed on {path}; use {allowed}.")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("Invalid URL ({method} {path}).")]
    UnknownPath { method: String, path: String },
    #[error("Timed out reading the request body from the client.")]
    ClientBodyTimeout,
    #[error("The request could not be read: {0}.")]
    InvalidRequestFraming(String),
    #[error(
        "The gateway is holding too many request bodies; retry after {RETRY_AFTER_SECONDS} s."
    )]
    BodyBudgetBusy,
    #[error("No healthy replica is available for model `{model}` (cluster `{cluster}`); try again shortly.")]
    NoReplicaAvailable { model: String, cluster: String },
    #[error("Every replica for model `{model}` (cluster `{cluster}`) is at capacity; retry after {retry_after_secs} s.")]
    Overloaded {
        model: String,
        cluster: String,
        retry_after_secs: u64,
    },
    /// The route's cluster runs a server that does not serve this endpoint.
    #[error("The model `{model}` is served by cluster `{cluster}` ({flavour}), which does not serve {endpoint}.")]
    EndpointNotServed {
        model: String,
        endpoint: &'static str,
        cluster: String,
        flavour: &'static str,
    },
    #[error("Could not connect to an upstream replica for model `{model}`: {detail}.")]
    UpstreamUnreachable { model: String, detail: String },
    #[error("The upstream replica did not answer in time for model `{model}`.")]
    UpstreamTimeout { model: String },
    #[error("The upstream replica failed while answering for model `{model}`: {detail}.")]
    UpstreamFailed { model: String, detail: String },
    #[error("The upstream replica for model `{model}` answered HTTP {status} with an empty body.")]
    UpstreamEmptyError { model: String, status: u16 },
    /// A lua-free rule's `deny` action.
    #[error("{message}")]
    RuleDenied {
        status: u16,
        message: String,
        code: String,
    },
    #[error("Internal gateway error: {0}.")]
    Internal(String),
    /// A Responses API id this gateway cannot route (unknown, forgotten, another key's, or
    /// its replica out of service).
    #[error("{0}")]
    StoredResponse(#[from] StoredResponseError),
}

/// Why a stored Responses API response cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoredResponseError {
    /// `GET`/`DELETE`/`cancel` of an id not known for this key (vLLM's own message).
    #[error("Response with id '{id}' not found.")]
    NotFound { id: String },
    /// `previous_response_id` names a response not known for this key: start a new
    /// conversation (send the history as `input`) instead.
    #[error("Previous response with id '{id}' not found. It may have expired from this gateway's routing table ({capacity} ids) or was created with another key; send the conversation as `input` instead.")]
    PreviousNotFound { id: String, capacity: usize },
    /// The replica holding it is out of service; it may come back.
    #[error("The replica holding response '{id}' ({replica}) is unavailable; retry after {RETRY_AFTER_SECONDS} s, or send the conversation as `input` instead.")]
    ReplicaUnavailable { id: String, replica: String },
}

impl StoredResponseError {
    pub fn status(&self) -> u16 {
        match self {
            StoredResponseError::NotFound { .. } | StoredResponseError::PreviousNotFound { .. } => {
                404
            }
            StoredResponseError::ReplicaUnavailable { .. } => 503,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            StoredResponseError::NotFound { .. } => "response_not_found",
            StoredResponseError::PreviousNotFound { .. } => "previous_response_not_found",
            StoredResponseError::ReplicaUnavailable { .. } => "stored_response_unavailable",
        }
    }

    fn param(&self) -> &'static str {
        match self {
            StoredResponseError::NotFound { .. }
            | StoredResponseError::ReplicaUnavailable { .. } => "response_id",
            StoredResponseError::PreviousNotFound { .. } => "previous_response_id",
        }
    }
}

/// Seconds a client should wait before retrying a 503 from us (within every SDK major's range).
pub const RETRY_AFTER_SECONDS: u64 = 1;

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BodyTooLarge { .. } | ApiError::BodyTooLargeStreaming { .. } => 413,
            ApiError::InvalidBody(_)
            | ApiError::OllamaRequest(_)
            | ApiError::InvalidRequestFraming(_) => 400,
            ApiError::Unauthorized(e) => e.status(),
            ApiError::RateLimited(_) => 429,
            ApiError::RuleDenied { status, .. } => *status,
            ApiError::ModelNotFound { .. }
            | ApiError::UnknownPath { .. }
            | ApiError::EndpointNotServed { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::ClientBodyTimeout => 408,
            ApiError::NoReplicaAvailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::BodyBudgetBusy => 503,
            ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamFailed { .. } => 502,
            ApiError::UpstreamTimeout { .. } => 504,
            ApiError::UpstreamEmptyError { status, .. } => *status,
            ApiError::Internal(_) => 500,
            ApiError::StoredResponse(e) => e.status(),
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(e) => e.error_type(),
            ApiError::RuleDenied { status, .. } if *status >= 500 => "server_error",
            ApiError::RuleDenied { .. } => "invalid_request_error",
            ApiError::RateLimited(r) => r.error_type(),
            ApiError::BodyTooLarge { .. }
            | ApiError::BodyTooLargeStreaming { .. }
            | ApiError::InvalidBody(_)
            | ApiError::OllamaRequest(_)
            | ApiError::InvalidRequestFraming(_)
            | ApiError::ModelNotFound { .. }
            | ApiError::EndpointNotServed { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::UnknownPath { .. }
            | ApiError::ClientBodyTimeout => "invalid_request_error",
            ApiError::UpstreamEmptyError { status, .. } if *status < 500 => "invalid_request_error",
            ApiError::StoredResponse(e) if e.status() < 500 => "invalid_request_error",
            ApiError::StoredResponse(_) => "server_error",
            ApiError::NoReplicaAvailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::BodyBudgetBusy
            | ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::UpstreamFailed { .. }
            | ApiError::UpstreamEmptyError { .. }
            | ApiError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`: a string or null.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::BodyTooLarge { .. } | ApiError::BodyTooLargeStreaming { .. } => {
                Some("request_too_large")
            }
            ApiError::InvalidBody(e) => Some(e.code()),
            ApiError::OllamaRequest(e) => Some(e.code()),
            ApiError::Unauthorized(e) => Some(e.code()),
            ApiError::RuleDenied { code, .. } => Some(code.as_str()),
            ApiError::RateLimited(_) => Some(RateLimited::CODE),
            ApiError::ModelNotFound { .. } => Some("model_not_found"),
            ApiError::EndpointNotServed { .. } => Some("endpoint_not_served"),
            ApiError::MethodNotAllowed { .. } => Some("method_not_allowed"),
            ApiError::UnknownPath { .. } => Some("unknown_url"),
            ApiError::ClientBodyTimeout => Some("request_timeout"),
            ApiError::InvalidRequestFraming(_) => Some("invalid_request"),
            ApiError::NoReplicaAvailable { .. } => Some("no_replica_available"),
            ApiError::Overloaded { .. } => Some("overloaded"),
            ApiError::BodyBudgetBusy => Some("body_budget_exceeded"),
            ApiError::UpstreamUnreachable { .. } => Some("upstream_unreachable"),
            ApiError::UpstreamTimeout { .. } => Some("upstream_timeout"),
            ApiError::UpstreamFailed { .. } | ApiError::UpstreamEmptyError { .. } => {
                Some("upstream_error")
            }
            ApiError::Internal(_) => Some("internal_error"),
            ApiError::StoredResponse(e) => Some(e.code()),
        }
    }

    /// The access log's `error`: the code, else the type.
    pub fn log_code(&self) -> &str {
        self.code().unwrap_or_else(|| self.error_type())
    }

    /// The `code` label of `tokengate_local_errors_total`: a fixed set. Rule denials carry a
    /// code from the rule files, so they count as one `rule_denied`.
    pub fn metric_code(&self) -> &'static str {
        match self {
            ApiError::RuleDenied { .. } => "rule_denied",
            ApiError::InvalidBody(e) => e.code(),
            ApiError::OllamaRequest(e) => e.code(),
            ApiError::Unauthorized(e) => e.code(),
            ApiError::BodyTooLarge { .. } | ApiError::BodyTooLargeStreaming { .. } => {
                "request_too_large"
            }
            ApiError::RateLimited(_) => RateLimited::CODE,
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::EndpointNotServed { .. } => "endpoint_not_served",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UnknownPath { .. } => "unknown_url",
            ApiError::ClientBodyTimeout => "request_timeout",
            ApiError::InvalidRequestFraming(_) => "invalid_request",
            ApiError::NoReplicaAvailable { .. } => "no_replica_available",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::BodyBudgetBusy => "body_budget_exceeded",
            ApiError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::UpstreamFailed { .. } | ApiError::UpstreamEmptyError { .. } => {
                "upstream_error"
            }
            ApiError::Internal(_) => "internal_error",
            ApiError::StoredResponse(e) => e.code(),
        }
    }

    pub fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidBody(e) => e.param(),
            ApiError::ModelNotFound { .. } | ApiError::EndpointNotServed { .. } => Some("model"),
            ApiError::StoredResponse(e) => Some(e.param()),
            ApiError::BodyTooLarge { .. }
            | ApiError::BodyTooLargeStreaming { .. }
            | ApiError::OllamaRequest(_)
            | ApiError::Unauthorized(_)
            | ApiError::RateLimited(_)
            | ApiError::RuleDenied { .. }
            | ApiError::MethodNotAllowed { .. }
            | ApiError::UnknownPath { .. }
            | ApiError::ClientBodyTimeout
            | ApiError::InvalidRequestFraming(_)
            | ApiError::NoReplicaAvailable { .. }
            | ApiError::Overloaded { .. }
            | ApiError::BodyBudgetBusy
            | ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::UpstreamFailed { .. }
            | ApiError::UpstreamEmptyError { .. }
            | ApiError::Internal(_) => None,
        }
    }

    /// Extra response headers this error needs (e.g. `Retry-After` on a 503, `Allow` on a 405).
    pub fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::NoReplicaAvailable { .. }
            | ApiError::BodyBudgetBusy
            | ApiError::StoredResponse(StoredResponseError::ReplicaUnavailable { .. }) => {
                vec![
                    ("retry-after", RETRY_AFTER_SECONDS.to_string()),
                    ("retry-after-ms", (RETRY_AFTER_SECONDS * 1000).to_string()),
                ]
            }
            ApiError::Overloaded {
                retry_after_secs, ..
            } => vec![
                ("retry-after", retry_after_secs.to_string()),
                ("retry-after-ms", (retry_after_secs * 1000).to_string()),
            ],
            ApiError::MethodNotAllowed { allowed, .. } => vec![("allow", (*allowed).to_string())],
            ApiError::RateLimited(r) => {
                let mut pairs = r.headers.pairs();
                // Too large: no wait can help, so the SDKs must not retry.
                if r.too_large {
                    pairs.push(("x-should-retry", "false".to_string()));
                }
                pairs
            }
            ApiError::Unauthorized(_) => vec![("www-authenticate", "Bearer".to_string())],
            _ => Vec::new(),
        }
    }

    /// The JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> Bytes {
        error_body(
            &self.to_string(),
            self.error_type(),
            self.param(),
            self.code(),
        )
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// Serialise an OpenAI-shaped error body. The one place that shape is written.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let envelope = ErrorEnvelope {
        error: ErrorObject {
            message,
            kind,
            param,
            code,
        },
    };
    // Serialising plain strings into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::UnknownPath { method, path } => ApiError::UnknownPath { method, path },
            RouteError::MethodNotAllowed {
                method,
                path,
                allowed,
            } => ApiError::MethodNotAllowed {
                method,
                path,
                allowed,
            },
            RouteError::ModelNotFound { model } => ApiError::ModelNotFound { model },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let err = ApiError::ModelNotFound {
            model: "nope".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(err.status(), 404);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("`nope`"));
    }

    #[test]
    fn no_replica_carries_retry_after() {
        let err = ApiError::NoReplicaAvailable {
            model: "m".into(),
            cluster: "c".into(),
        };
        assert_eq!(err.status(), 503);
        assert!(err.extra_headers().iter().any(|(k, _)| *k == "retry-after"));
    }

    #[test]
    fn stored_response_errors_say_what_to_do() {
        let e = ApiError::from(StoredResponseError::PreviousNotFound {
            id: "resp_1".into(),
            capacity: 10,
        });
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["code"], "previous_response_not_found");
        assert_eq!(v["error"]["param"], "previous_response_id");
        assert!(v["error"]["message"].as_str().unwrap().contains("`input`"));
        let e = ApiError::from(StoredResponseError::ReplicaUnavailable {
            id: "resp_1".into(),
            replica: "r".into(),
        });
        assert_eq!((e.status(), e.error_type()), (503, "server_error"));
        assert!(e.extra_headers().iter().any(|(k, _)| *k == "retry-after"));
        let e = ApiError::from(StoredResponseError::NotFound { id: "x".into() });
        assert_eq!(e.to_string(), "Response with id 'x' not found.");
    }

    #[test]
    fn message_escapes_are_json_safe() {
        let err = ApiError::ModelNotFound {
            model: "a\"b\\c\n".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a\"b\\c\n"));
    }
}
