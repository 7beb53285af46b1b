//! The per-request context: plain data that every phase hook reads and writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::ApiKey;
use crate::config::Route;
use crate::errors::ApiError;
use crate::fleet::InFlight;
use crate::metering::{ResponseMeter, UsageRecord};
use crate::ratelimit::Reservation;
use crate::routing::Endpoint;
use crate::state::Snapshot;

pub struct RequestCtx {
    /// The config snapshot for this request's whole life.
    pub config: Arc<Snapshot>,
    /// Our id for this request; sent to the client and, suffixed per attempt, upstream.
    pub request_id: String,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    /// Shared with the snapshot; a rule's route override makes a new one.
    pub route: Option<Arc<Route>>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    pub client_body_len: usize,
    /// The body bytes this request holds in the process-wide budget, returned when it ends.
    pub body_lease: Option<crate::ratelimit::body_budget::BodyLease>,
    /// The rewritten body sent on every attempt (cloned, never taken: retries resend it).
    pub upstream_body: Option<Bytes>,
    /// Replica indexes of the route's cluster already tried, in order.
    pub tried: Vec<usize>,
    /// The current attempt's replica (index into the cluster) and its in-flight slot.
    pub replica_index: Option<usize>,
    pub in_flight: Option<InFlight>,
    /// `prefix-affinity` key (prompt prefix or affinity header), when the cluster uses it.
    pub prefix_key: Option<u64>,
    /// The replica answered with a status worth retrying elsewhere (502/503, empty 500).
    pub retry_status: bool,
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
    pub key: Option<Arc<ApiKey>>,
    /// Tokens and concurrency slots held against the rate limits; settled in `logging`.
    pub reservation: Option<Reservation>,
    /// Tags from rules, for the access log and metrics.
    pub tags: Vec<String>,
    /// Rules that matched, for the access log.
    pub rules_matched: Vec<String>,
    pub rate_limit_class: Option<String>,
    pub priority: Option<i32>,
    /// Header edits from rules, applied to the upstream request / the client's response.
    pub set_request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request_headers: Vec<http::HeaderName>,
    pub set_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response_headers: Vec<http::HeaderName>,
    /// Time spent in tokengate's own code (not waiting on the client or a replica).
    pub overhead: Duration,
    /// Time spent waiting for the client to send its body (excluded from overhead).
    pub body_wait: Duration,
    /// Cluster whose in-flight gauge this request holds.
    pub in_flight_cluster: Option<String>,
}

impl RequestCtx {
    pub fn new(config: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            config,
            request_id: new_request_id(),
            started: Instant::now(),
            endpoint: None,
            route: None,
            stream: false,
            client_body_len: 0,
            body_lease: None,
            upstream_body: None,
            tried: Vec::new(),
            replica_index: None,
            in_flight: None,
            prefix_key: None,
            retry_status: false,
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
            key: None,
            reservation: None,
            tags: Vec::new(),
            rules_matched: Vec::new(),
            rate_limit_class: None,
            priority: None,
            set_request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
            set_response_headers: Vec::new(),
            remove_response_headers: Vec::new(),
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
