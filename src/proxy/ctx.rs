//! The per-request context: plain data that every phase hook reads and writes, grouped by who
//! writes it: admission (`request_filter`), the current attempt (peer choice and retries), the
//! reply (response filters), timing, and how the request ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::ApiKey;
use crate::client_request_id::PASSED_ON_HEADER;
use crate::config::Route;
use crate::errors::ApiError;
use crate::fleet::InFlight;
use crate::metering::{ResponseMeter, UsageRecord};
use crate::ratelimit::Reservation;
use crate::routing::response_model::ModelRewriter;
use crate::routing::{Endpoint, Protocol};
use crate::state::Snapshot;

pub struct RequestCtx {
    /// The config snapshot for this request's whole life.
    pub config: Arc<Snapshot>,
    /// Our id for this request; sent to the client and, suffixed per attempt, upstream.
    pub request_id: String,
    /// The client's own `X-Request-ID`, sanitised: passed on as `x-client-request-id`.
    pub client_request_id: Option<String>,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub admission: Admission,
    pub attempt: Attempt,
    pub reply: Reply,
    pub timing: Timing,
    pub outcome: Outcome,
}

/// What `request_filter` decided; read by every later phase.
#[derive(Default)]
pub struct Admission {
    /// The authenticated key; `None` when auth is off.
    pub key: Option<Arc<ApiKey>>,
    /// Shared with the snapshot; a rule's route override makes a new one.
    pub route: Option<Arc<Route>>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    pub client_body_len: usize,
    /// The body bytes this request holds in the process-wide budget, returned when it ends.
    pub body_lease: Option<crate::ratelimit::body_budget::BodyLease>,
    /// Raw bytes of `messages` / `prompt` / `input`: the prompt-size estimate.
    pub prompt_bytes: usize,
    /// The rewritten body sent on every attempt (cloned, never taken: retries resend it).
    pub upstream_body: Option<Bytes>,
    /// Set when a body beyond Pingora's replay buffer made `replay` wrap the downstream
    /// session: `logging` puts the real session back from here (client keep-alive).
    pub replay_home: Option<super::replay::ReplayHome>,
    /// `prefix-affinity` key (prompt prefix or affinity header), when the cluster uses it.
    pub prefix_key: Option<u64>,
    /// `scored` policy: the prompt's block hashes (bounded, see `fleet::prefix`).
    pub prefix_blocks: Vec<u64>,
    /// Streaming with usage the proxy switched on: remove the usage chunk from the client's
    /// stream.
    pub strip_usage: bool,
    /// Tokens and concurrency slots held against the rate limits; settled in `logging`.
    pub reservation: Option<Reservation>,
    /// A rate-limit class's own share of the request (its per-key share is `reservation`).
    pub class_reservation: Option<Reservation>,
    /// The cluster's in-flight gauge, held from admission until the context is dropped.
    pub in_flight_gauge: Option<InFlightGauge>,
    pub rules: RuleEffects,
    /// The one replica (`host:port`) this request may go to: a stored Responses API
    /// response's (`GET`/`DELETE`/`cancel`, `previous_response_id`). No retry elsewhere.
    pub pinned_replica: Option<String>,
    /// The response id of a stored-response route (`/v1/responses/{id}`).
    pub stored_id: Option<String>,
    /// A stored-response route's hold on the key's concurrency (released when dropped).
    pub key_ticket: Option<crate::ratelimit::KeyTicket>,
    /// An Ollama call (translated to OpenAI's before routing).
    pub ollama: Option<super::ollama::OllamaCall>,
}

/// What the rules in force added to the request.
#[derive(Default)]
pub struct RuleEffects {
    /// Tags, for the access log and metrics.
    pub tags: Vec<String>,
    /// Rules that matched, for the access log.
    pub matched: Vec<String>,
    pub rate_limit_class: Option<String>,
    pub priority: Option<i32>,
    /// Header edits, applied to the upstream request / the client's response.
    pub set_request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_request_headers: Vec<http::HeaderName>,
    pub set_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_response_headers: Vec<http::HeaderName>,
}

/// The current upstream attempt and the ones before it.
#[derive(Default)]
pub struct Attempt {
    /// Replica indexes of the route's cluster already tried, in order.
    pub tried: Vec<usize>,
    /// The current attempt's replica (index into the cluster) and its in-flight slot.
    pub replica_index: Option<usize>,
    pub in_flight: Option<InFlight>,
    /// Hands the slot to the cluster's admission queue when dropped (after `in_flight`).
    pub queue_slot: Option<crate::state::queues::SlotRelease>,
    /// The replica answered with a status worth retrying elsewhere (502/503, empty 500).
    pub retry_status: bool,
    /// Attempts started so far.
    pub count: usize,
    /// `host:port` of the current attempt's replica.
    pub replica: Option<String>,
    /// When the current attempt's request went upstream (TTFT origin).
    pub upstream_sent_at: Option<Instant>,
}

/// The response on its way to the client.
#[derive(Default)]
pub struct Reply {
    pub upstream_status: Option<u16>,
    /// Set when the upstream answered an error whose body we rewrite to the OpenAI shape.
    pub error_body: Option<BytesMut>,
    /// Meters the response body as it passes.
    pub meter: Option<ResponseMeter>,
    /// The reply of an Ollama call, translated from the metered OpenAI body.
    pub ollama: Option<super::ollama::Translation>,
    /// The served name back to the alias in `model`, after the meter (it meters the
    /// replica's bytes); `None`: nothing to rewrite.
    pub model_rewrite: Option<ModelRewriter>,
    pub response_bytes: usize,
    /// A Responses API response's id was recorded for follow-up routing.
    pub response_id_recorded: bool,
}

/// Where the request's time went.
#[derive(Default)]
pub struct Timing {
    /// Time spent in tokengate's own code (not waiting on the client or a replica).
    pub overhead: Duration,
    /// Time spent waiting for the client to send its body (excluded from overhead).
    pub body_wait: Duration,
}

/// How the request ended.
#[derive(Default)]
pub struct Outcome {
    /// The error we answered the client with (decided in a hook, or in `fail_to_proxy`);
    /// its code goes to the access log and `tokengate_local_errors_total`.
    pub failure: Option<ApiError>,
    /// Status we answered with ourselves (for the log).
    pub local_status: Option<u16>,
    /// The request's one usage record, settled in `logging`.
    pub usage: Option<UsageRecord>,
    /// The client went away before its answer was complete (logged 499 `client_closed`).
    pub client_closed: bool,
    /// The code of an error event the replica sent mid-stream (the status was 200).
    pub stream_error: Option<String>,
}

/// One request counted in `tokengate_in_flight_requests{cluster}` for as long as this lives.
pub struct InFlightGauge(prometheus::IntGauge);

impl InFlightGauge {
    /// Through the snapshot's handle for `cluster` (looked up only for a cluster it lacks).
    pub fn hold(snapshot: &Snapshot, cluster: &str) -> InFlightGauge {
        let gauge = snapshot.runtime(cluster).map_or_else(
            || crate::metrics::IN_FLIGHT.with_label_values(&[cluster]),
            |c| c.metrics.in_flight().clone(),
        );
        gauge.inc();
        InFlightGauge(gauge)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestCtx {
    pub fn new(config: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            config,
            request_id: new_request_id(),
            client_request_id: None,
            started: Instant::now(),
            endpoint: None,
            admission: Admission::default(),
            attempt: Attempt::default(),
            reply: Reply::default(),
            timing: Timing::default(),
            outcome: Outcome::default(),
        }
    }

    /// Key label for logs and metrics: the key's name (never the secret), `-` without auth.
    /// The client's protocol (OpenAI's until the endpoint is known).
    pub fn protocol(&self) -> Protocol {
        self.endpoint.map_or(Protocol::OpenAi, Endpoint::protocol)
    }

    pub fn key_label(&self) -> &str {
        self.admission.key.as_ref().map_or("-", |k| k.name.as_str())
    }

    /// The model alias for messages, or `-` before it is known.
    pub fn model_label(&self) -> &str {
        self.admission
            .route
            .as_ref()
            .map_or("-", |r| r.alias.as_str())
    }

    /// The ids every response carries.
    pub fn ids(&self) -> ResponseIds<'_> {
        ResponseIds {
            ours: &self.request_id,
            client: self.client_request_id.as_deref(),
        }
    }

    /// `X-Request-Id` for the current upstream attempt: unique per attempt so a replica never
    /// sees one id twice.
    pub fn attempt_request_id(&self) -> String {
        if self.attempt.count <= 1 {
            self.request_id.clone()
        } else {
            format!("{}-{}", self.request_id, self.attempt.count)
        }
    }

    /// Run `work` and count its time as tokengate's own (the proxy-overhead histogram).
    pub fn timed<T>(&mut self, work: impl FnOnce(&mut RequestCtx) -> T) -> T {
        let started = Instant::now();
        let out = work(self);
        self.timing.overhead += started.elapsed();
        out
    }
}

/// `x-request-id` (ours) and `x-client-request-id` (the client's, if it sent a usable one).
#[derive(Debug, Clone, Copy)]
pub struct ResponseIds<'a> {
    pub ours: &'a str,
    pub client: Option<&'a str>,
}

impl ResponseIds<'_> {
    /// Set both on a response header (a replica's own `x-client-request-id` never passes).
    pub fn apply(self, header: &mut pingora_http::ResponseHeader) -> pingora_core::Result<()> {
        header.insert_header("x-request-id", self.ours)?;
        match self.client {
            Some(id) => header.insert_header(PASSED_ON_HEADER, id)?,
            None => {
                header.remove_header(PASSED_ON_HEADER);
            }
        }
        Ok(())
    }
}

/// `tg-` + 32 hex digits (128 random bits).
pub fn new_request_id() -> String {
    format!("tg-{:032x}", fastrand::u128(..))
}
