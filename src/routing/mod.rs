//! Which endpoint a request is for, and what a public model alias resolves to.
//! The body scanner and byte-exact rewriter live in `body`; the response's `model` (served
//! name back to the alias) in `response_model`.

pub mod body;
mod percent;
pub use percent::percent_decode;
pub mod response_model;

use std::sync::Arc;

use crate::config::{Config, Route};
use crate::fleet::{Surface, Surfaces};

/// Why a request has no route; `errors` maps it to the client-facing error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("unknown path {method} {path}")]
    UnknownPath { method: String, path: String },
    #[error("{method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("model {model} not found")]
    ModelNotFound { model: String },
}

/// The API family a client speaks: decides the error shape and the stream's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI's (chat/completions, completions, embeddings, models).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Ollama's API (`/api/*`), translated to and from OpenAI's.
    Ollama,
}

/// The client-facing API surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    ListModels,
    /// `GET /v1/models/{id}`
    RetrieveModel,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI's `POST /v1/responses`.
    Responses,
    /// `GET /v1/responses/{id}`: routed to the replica that stored it.
    RetrieveResponse,
    /// `DELETE /v1/responses/{id}`
    DeleteResponse,
    /// `POST /v1/responses/{id}/cancel`
    CancelResponse,
    /// Ollama's `GET /api/tags`, `GET /api/version`, `POST /api/show` (answered locally).
    OllamaTags,
    OllamaVersion,
    OllamaShow,
    /// Ollama's `POST /api/chat`, sent to a replica's `/v1/chat/completions`.
    OllamaChat,
    /// Ollama's `POST /api/generate`, sent to a replica's `/v1/completions`.
    OllamaGenerate,
    /// The proxy's own liveness.
    Health,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`index` is the position here).
    pub const ALL: [Endpoint; 17] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::ListModels,
        Endpoint::RetrieveModel,
        Endpoint::Messages,
        Endpoint::CountTokens,
        Endpoint::Responses,
        Endpoint::RetrieveResponse,
        Endpoint::DeleteResponse,
        Endpoint::CancelResponse,
        Endpoint::OllamaTags,
        Endpoint::OllamaVersion,
        Endpoint::OllamaShow,
        Endpoint::OllamaChat,
        Endpoint::OllamaGenerate,
        Endpoint::Health,
    ];

    /// A dense index, for tables with a slot per endpoint.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Endpoints answered by a replica (and so routed by the body's `model`).
    pub fn is_proxied(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Messages
                | Endpoint::CountTokens
                | Endpoint::Responses
                | Endpoint::OllamaChat
                | Endpoint::OllamaGenerate
        )
    }

    /// The stored-response routes: no body to route by, the id names the replica.
    pub fn is_stored_response(self) -> bool {
        matches!(
            self,
            Endpoint::RetrieveResponse | Endpoint::DeleteResponse | Endpoint::CancelResponse
        )
    }

    /// The API family whose shapes (errors, stream events) the client expects.
    pub fn protocol(self) -> Protocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Protocol::Anthropic,
            Endpoint::OllamaTags
            | Endpoint::OllamaVersion
            | Endpoint::OllamaShow
            | Endpoint::OllamaChat
            | Endpoint::OllamaGenerate => Protocol::Ollama,
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::ListModels
            | Endpoint::RetrieveModel
            | Endpoint::Responses
            | Endpoint::RetrieveResponse
            | Endpoint::DeleteResponse
            | Endpoint::CancelResponse
            | Endpoint::Health => Protocol::OpenAi,
        }
    }

    /// The API surface a cluster must serve for this endpoint (`None`: answered locally).
    pub fn surface(self) -> Option<Surface> {
        match self {
            Endpoint::ChatCompletions => Some(Surface::Chat),
            Endpoint::Completions => Some(Surface::Completions),
            Endpoint::Embeddings => Some(Surface::Embeddings),
            Endpoint::Messages | Endpoint::CountTokens => Some(Surface::Messages),
            Endpoint::Responses
            | Endpoint::RetrieveResponse
            | Endpoint::DeleteResponse
            | Endpoint::CancelResponse => Some(Surface::Responses),
            // Translated to chat/completions before routing (a raw generate to completions:
            // admission checks the translated call's own surface).
            Endpoint::OllamaChat | Endpoint::OllamaGenerate => Some(Surface::Chat),
            Endpoint::ListModels
            | Endpoint::RetrieveModel
            | Endpoint::OllamaTags
            | Endpoint::OllamaVersion
            | Endpoint::OllamaShow
            | Endpoint::Health => None,
        }
    }

    /// Whether a cluster serving `serves` answers this endpoint (UPSTREAMS.md §11: only vLLM
    /// has the Anthropic and Responses routes; trtllm-serve and Triton's frontend answer 404).
    pub fn served_by(self, serves: Surfaces) -> bool {
        self.surface().is_none_or(|s| serves.contains(s))
    }

    /// The request path, for messages that name the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::ListModels => "/v1/models",
            Endpoint::RetrieveModel => "/v1/models/{id}",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Responses => "/v1/responses",
            Endpoint::RetrieveResponse | Endpoint::DeleteResponse => "/v1/responses/{id}",
            Endpoint::CancelResponse => "/v1/responses/{id}/cancel",
            Endpoint::OllamaTags => "/api/tags",
            Endpoint::OllamaVersion => "/api/version",
            Endpoint::OllamaShow => "/api/show",
            Endpoint::OllamaChat => "/api/chat",
            Endpoint::OllamaGenerate => "/api/generate",
            Endpoint::Health => "/health",
        }
    }

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ListModels => "list_models",
            Endpoint::RetrieveModel => "retrieve_model",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::RetrieveResponse => "retrieve_response",
            Endpoint::DeleteResponse => "delete_response",
            Endpoint::CancelResponse => "cancel_response",
            Endpoint::OllamaTags => "ollama_tags",
            Endpoint::OllamaVersion => "ollama_version",
            Endpoint::OllamaShow => "ollama_show",
            Endpoint::OllamaChat => "ollama_chat",
            Endpoint::OllamaGenerate => "ollama_generate",
            Endpoint::Health => "health",
        }
    }
}

/// The protocol of a request's answers: its endpoint's, else (an unknown path) Ollama's for
/// `/api/…` and OpenAI's for the rest.
pub fn protocol_for(endpoint: Option<Endpoint>, path: &str) -> Protocol {
    match endpoint {
        Some(endpoint) => endpoint.protocol(),
        None if path.starts_with("/api/") => Protocol::Ollama,
        None => Protocol::OpenAi,
    }
}

/// Classify a request by method and path (without query string).
pub fn classify(method: &str, path: &str) -> Result<Endpoint, RouteError> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let (endpoint, allowed) = match path {
        "/v1/chat/completions" => (Endpoint::ChatCompletions, "POST"),
        "/v1/completions" => (Endpoint::Completions, "POST"),
        "/v1/embeddings" => (Endpoint::Embeddings, "POST"),
        "/v1/messages" => (Endpoint::Messages, "POST"),
        "/v1/messages/count_tokens" => (Endpoint::CountTokens, "POST"),
        "/v1/responses" => (Endpoint::Responses, "POST"),
        p if stored_response_id(p).is_some() && !p.ends_with("/cancel") => {
            return match method {
                "GET" | "HEAD" => Ok(Endpoint::RetrieveResponse),
                "DELETE" => Ok(Endpoint::DeleteResponse),
                _ => Err(RouteError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.to_string(),
                    allowed: "GET, DELETE",
                }),
            };
        }
        p if p.ends_with("/cancel") && stored_response_id(p).is_some() => {
            (Endpoint::CancelResponse, "POST")
        }
        "/v1/models" => (Endpoint::ListModels, "GET"),
        "/health" => (Endpoint::Health, "GET"),
        "/api/tags" => (Endpoint::OllamaTags, "GET"),
        "/api/version" => (Endpoint::OllamaVersion, "GET"),
        "/api/show" => (Endpoint::OllamaShow, "POST"),
        "/api/chat" => (Endpoint::OllamaChat, "POST"),
        "/api/generate" => (Endpoint::OllamaGenerate, "POST"),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            (Endpoint::RetrieveModel, "GET")
        }
        _ => {
            return Err(RouteError::UnknownPath {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
    };
    let method_ok = method == allowed || (allowed == "GET" && method == "HEAD");
    if method_ok {
        Ok(endpoint)
    } else {
        Err(RouteError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed,
        })
    }
}

/// The `{id}` of `/v1/responses/{id}` or `/v1/responses/{id}/cancel` (one non-empty path
/// segment; `classify` has already stripped a trailing `/`).
pub fn stored_response_id(path: &str) -> Option<&str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let id = path.strip_prefix("/v1/responses/")?;
    let id = id.strip_suffix("/cancel").unwrap_or(id);
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The body's facts as the endpoint means them: the Responses API's output budget is
/// `max_output_tokens` (what the buckets reserve).
/// (Copied only for that endpoint.)
pub fn endpoint_facts<'s>(
    endpoint: Endpoint,
    scan: &'s body::BodyScan<'_>,
) -> std::borrow::Cow<'s, body::RequestFacts> {
    if endpoint != Endpoint::Responses {
        return std::borrow::Cow::Borrowed(scan.facts());
    }
    let mut facts = scan.facts().clone();
    facts.max_tokens = scan
        .raw_value("max_output_tokens")
        .and_then(|raw| serde_json::from_str::<u64>(raw).ok());
    facts.max_completion_tokens = None;
    std::borrow::Cow::Owned(facts)
}

/// What an endpoint requires of a body beyond the scan's checks: Anthropic's Messages always
/// carries `max_tokens` (it is what the token buckets reserve).
pub fn check_body(endpoint: Endpoint, facts: &body::RequestFacts) -> Result<(), body::BodyError> {
    if endpoint == Endpoint::Messages && facts.max_tokens.is_none() {
        return Err(body::BodyError::MissingField {
            param: "max_tokens",
        });
    }
    Ok(())
}

/// The rewriter of the response's `model` (served name → alias) for a route and endpoint;
/// A response may name the route's served name or, from a vLLM serving several, another
/// served name of its cluster (vLLM answers with its first). `None` when the route keeps the
/// served name (`expose_served_name`), every such name is the alias, or the endpoint's
/// response names no model.
pub fn response_model_rewriter(
    route: &Route,
    endpoint: Endpoint,
    framing: response_model::Framing,
) -> Option<response_model::ModelRewriter> {
    use response_model::{ModelRewriter, Shape};
    if route.expose_served_name {
        return None;
    }
    let shape = match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Shape::OpenAi,
        Endpoint::Messages => Shape::Anthropic,
        Endpoint::Responses | Endpoint::RetrieveResponse | Endpoint::CancelResponse => {
            Shape::Responses
        }
        // Ollama replies are built by the translation, which names the alias itself.
        Endpoint::OllamaChat
        | Endpoint::OllamaGenerate
        | Endpoint::OllamaTags
        | Endpoint::OllamaVersion
        | Endpoint::OllamaShow
        | Endpoint::DeleteResponse
        | Endpoint::CountTokens
        | Endpoint::ListModels
        | Endpoint::RetrieveModel
        | Endpoint::Health => return None,
    };
    let names = if route.cluster_names.contains(&route.served_name) {
        route.cluster_names.clone()
    } else {
        // A route built without its cluster's names (never from config validation).
        Arc::from([route.served_name.clone()])
    };
    ModelRewriter::new(names, &route.alias, shape, framing)
}

/// Resolve a public alias to its route, or OpenAI's 404 `model_not_found`.
pub fn resolve<'c>(config: &'c Config, alias: &str) -> Result<&'c Arc<Route>, RouteError> {
    config
        .route(alias)
        .ok_or_else(|| RouteError::ModelNotFound {
            model: alias.to_string(),
        })
}

/// `GET /v1/models`, in OpenAI's list shape, from config: the aliases `visible` admits.
pub fn models_list_json(config: &Config, visible: impl Fn(&str) -> bool) -> bytes::Bytes {
    let data: Vec<serde_json::Value> = config
        .routes_in_order()
        .filter(|r| visible(&r.alias))
        .map(|r| model_card(config, r))
        .collect();
    let list = serde_json::json!({ "object": "list", "data": data });
    bytes::Bytes::from(list.to_string())
}

/// `GET /v1/models/{id}`.
pub fn model_json(config: &Config, alias: &str) -> Result<bytes::Bytes, RouteError> {
    let route = resolve(config, alias)?;
    Ok(bytes::Bytes::from(model_card(config, route).to_string()))
}

fn model_card(config: &Config, route: &Route) -> serde_json::Value {
    serde_json::json!({
        "id": route.alias,
        "object": "model",
        "created": config.loaded_at_unix,
        "owned_by": route.owned_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_api_routes() {
        assert_eq!(
            classify("POST", "/v1/chat/completions").unwrap(),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            classify("POST", "/v1/completions/").unwrap(),
            Endpoint::Completions
        );
        assert_eq!(
            classify("POST", "/v1/embeddings").unwrap(),
            Endpoint::Embeddings
        );
        assert_eq!(classify("GET", "/v1/models").unwrap(), Endpoint::ListModels);
        assert_eq!(
            classify("GET", "/v1/models/x").unwrap(),
            Endpoint::RetrieveModel
        );
        assert_eq!(classify("GET", "/health").unwrap(), Endpoint::Health);
        assert_eq!(
            classify("POST", "/v1/responses").unwrap(),
            Endpoint::Responses
        );
        assert_eq!(
            classify("GET", "/v1/responses/resp_1").unwrap(),
            Endpoint::RetrieveResponse
        );
        assert_eq!(
            classify("DELETE", "/v1/responses/resp_1").unwrap(),
            Endpoint::DeleteResponse
        );
        assert_eq!(
            classify("POST", "/v1/responses/resp_1/cancel").unwrap(),
            Endpoint::CancelResponse
        );
        assert_eq!(stored_response_id("/v1/responses/r/cancel"), Some("r"));
        assert_eq!(stored_response_id("/v1/responses/"), None);
        assert_eq!(stored_response_id("/v1/responses/a/b"), None);
        assert_eq!(classify("POST", "/api/chat").unwrap(), Endpoint::OllamaChat);
        assert_eq!(classify("GET", "/api/tags").unwrap(), Endpoint::OllamaTags);
        assert_eq!(Endpoint::OllamaChat.protocol(), Protocol::Ollama);
        assert_eq!(protocol_for(None, "/api/pull"), Protocol::Ollama);
        assert_eq!(protocol_for(None, "/v2/x"), Protocol::OpenAi);
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        let not_allowed = |m, p| matches!(classify(m, p), Err(RouteError::MethodNotAllowed { .. }));
        let unknown = |m, p| matches!(classify(m, p), Err(RouteError::UnknownPath { .. }));
        assert!(not_allowed("GET", "/v1/chat/completions"));
        assert!(not_allowed("POST", "/v1/models"));
        assert!(unknown("POST", "/v2/anything"));
        assert!(
            unknown("GET", "/metrics"),
            "admin paths are never served publicly"
        );
    }
}
