//! The per-request context: plain data that every phase hook reads and writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Config, Route};
use crate::errors::ApiError;
use crate::metering::{ResponseMeter, UsageRecord};
use crate::routing::Endpoint;

pub struct RequestCtx {
    /// The config snapshot for this request's whole life.
    pub config: Arc<Config>,
    /// Our id for this request; sent to the client and, suffixed per attempt, upstream.
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub route: Option<Route>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    pub client_body_len: usize,
    /// The rewritten body sent on every attempt (cloned, never taken: retries resend it).
    pub upstream_body: Option<Bytes>,
    /// Replica indexes of the route's cluster already tried, in order.
    pub tried: Vec<usize>,
    pub attempts: usize,
    pub replica: Option<String>,
    pub upstream_status: Option<u16>,
    /// Set when the upstream answered an error whose body we rewrite to the OpenAI shape.
    pub error_body: Option<BytesMut>,
    /// An error we decided on in a hook that must surface in `fail_to_proxy`.
    pub failure: Option<ApiError>,
    /// Status we answered with ourselves (for the log).
    pub local_status: Option<u16>,
    pub response_bytes: usize,
    /// Streaming with usage the proxy switched on: remove the usage chunk from the client's
    /// stream.
    pub strip_usage: bool,
    /// Raw bytes of `messages` / `prompt` / `input`: the prompt-size estimate.
    pub prompt_bytes: usize,
    /// When the current attempt's request went upstream (TTFT origin).
    pub upstream_sent_at: Option<Instant>,
    /// Meters the response body as it passes.
    pub meter: Option<ResponseMeter>,
    /// The request's one usage record, settled in `logging`.
    pub usage: Option<UsageRecord>,
    /// The authenticated key's name (never the secret); `None` when auth is off.
    pub key_name: Option<String>,
    /// Tags from rules, for the access log.
    pub tags: Vec<String>,
    /// Time spent in tokengate's own code (not waiting on the client or a replica).
    pub overhead: Duration,
    /// Time spent waiting for the client to send its body (excluded from overhead).
    pub body_wait: Duration,
    /// Cluster whose in-flight gauge this request holds.
    pub in_flight_cluster: Option<String>,
}

impl RequestCtx {
    pub fn new(config: Arc<Config>) -> RequestCtx {
        RequestCtx {
            config,
            request_id: new_request_id(),
            started: Instant::now(),
            endpoint: None,
            route: None,
            stream: false,
            client_body_len: 0,
            upstream_body: None,
            tried: Vec::new(),
            attempts: 0,
            replica: None,
            upstream_status: None,
            error_body: None,
            failure: None,
            local_status: None,
            response_bytes: 0,
            strip_usage: false,
            prompt_bytes: 0,
            upstream_sent_at: None,
            meter: None,
            usage: None,
            key_name: None,
            tags: Vec::new(),
            overhead: Duration::ZERO,
            body_wait: Duration::ZERO,
            in_flight_cluster: None,
        }
    }

    /// Key label for logs and metrics.
    pub fn key_label(&self) -> &str {
        self.key_name.as_deref().unwrap_or("-")
    }

    /// The model alias for messages, or `-` before it is known.
    pub fn model_label(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.alias.as_str())
    }

    /// `X-Request-Id` for the current upstream attempt: unique per attempt so a replica never
    /// sees one id twice.
    pub fn attempt_request_id(&self) -> String {
        if self.attempts <= 1 {
            self.request_id.clone()
        } else {
            format!("{}-{}", self.request_id, self.attempts)
        }
    }
}

/// `tg-` + 32 hex digits (128 random bits).
pub fn new_request_id() -> String {
    format!("tg-{:032x}", fastrand::u128(..))
}
