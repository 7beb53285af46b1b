//! `request_filter`: decide what a request is and prepare everything the upstream attempt needs,
//! or answer it ourselves.

use std::sync::Arc;

use bytes::Bytes;
use pingora_core::Result;
use pingora_proxy::Session;

use super::body::{self, BodyReadError, PINGORA_REPLAY_LIMIT};
use super::ctx::{InFlightGauge, RequestCtx};
use super::limit_class::{self, Reserved};
use super::replay;
use super::respond::{write_error, write_json};
use crate::auth::{extract_presented_key, now_unix};
use crate::config::Route;
use crate::errors::ApiError;
use crate::fleet::prefix::joined_block_hashes;
use crate::fleet::{prefix_key, Policy};
use crate::ratelimit::{
    estimate_request_tokens, AdmissionRequest, GlobalLimits, KeyLimits, KeyTicket, ModelLimits,
    RateLimited, Reservation,
};
use crate::routing::body::{
    BodyEdit, BodyScan, RequestBody, RequestFacts, RewritePlan, StreamUsage,
};
use crate::routing::{self, Endpoint, Protocol};
use crate::state::AppState;

/// Returns `Ok(true)` when the response was written here.
pub async fn admit(state: &AppState, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    // Pingora keeps idle client connections forever unless told otherwise. While the process
    // shuts down (SIGTERM, or handing its listeners to a new binary) Pingora has already
    // turned keep-alive off so clients do not reuse a connection that is about to close:
    // leave that alone.
    // HTTP/1.0 clients get Pingora's default: no keep-alive unless they asked for it, and a
    // close-delimited body (they cannot read chunked encoding).
    let http10 = session.req_header().version == http::Version::HTTP_10;
    if !session.is_process_shutting_down() && !http10 {
        session.set_keepalive(Some(ctx.config.server.client_keepalive_seconds));
    }
    keep_client_request_id(session, ctx);
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let endpoint = match routing::classify(&method, &path) {
        Ok(endpoint) => endpoint,
        Err(e) => return reject(session, ctx, e.into(), true).await,
    };
    ctx.endpoint = Some(endpoint);
    if endpoint == Endpoint::Health {
        let body = Bytes::from_static(br#"{"status":"ok"}"#);
        return answer(session, ctx, body).await;
    }
    if let Some(keys) = state.keys() {
        let presented = extract_presented_key(&session.req_header().headers);
        match keys.authenticate(presented, now_unix()) {
            Ok(key) => ctx.admission.key = Some(key),
            Err(e) => return reject(session, ctx, e.into(), true).await,
        }
    }
    let visible = |alias: &str| {
        ctx.admission
            .key
            .as_ref()
            .is_none_or(|k| k.allows_model(alias))
    };
    match endpoint {
        Endpoint::Health => unreachable_health(),
        Endpoint::ListModels => {
            let body = routing::models_list_json(&ctx.config, visible);
            answer(session, ctx, body).await
        }
        Endpoint::RetrieveModel => {
            let alias = routing::percent_decode(
                path.trim_end_matches('/').trim_start_matches("/v1/models/"),
            );
            let found = if visible(&alias) {
                routing::model_json(&ctx.config, &alias).map_err(ApiError::from)
            } else {
                Err(ApiError::ModelNotFound { model: alias })
            };
            match found {
                Ok(body) => answer(session, ctx, body).await,
                Err(e) => reject(session, ctx, e, false).await,
            }
        }
        Endpoint::OllamaVersion => answer(session, ctx, crate::ollama::local::version_json()).await,
        Endpoint::OllamaTags => {
            let body = super::ollama::tags(&ctx.config, visible);
            answer(session, ctx, body).await
        }
        Endpoint::OllamaShow => {
            let shown = read_body(state, session, ctx).await.and_then(|body| {
                let config = ctx.config.clone();
                let key = ctx.admission.key.clone();
                let visible = |alias: &str| key.as_ref().is_none_or(|k| k.allows_model(alias));
                super::ollama::show(&config, visible, body.as_slice()).map_err(Refusal::from)
            });
            match shown {
                Ok(body) => answer(session, ctx, body).await,
                Err(refusal) => refuse(session, ctx, refusal).await,
            }
        }
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::Embeddings
        | Endpoint::Messages
        | Endpoint::CountTokens
        | Endpoint::Responses
        | Endpoint::OllamaChat
        | Endpoint::OllamaGenerate => prepare_upstream(state, session, ctx, endpoint).await,
        Endpoint::RetrieveResponse | Endpoint::DeleteResponse | Endpoint::CancelResponse => {
            admit_stored(state, session, ctx, endpoint, &path).await
        }
    }
}

/// The client's own `X-Request-ID`, sanitised, to pass on beside ours.
fn keep_client_request_id(session: &Session, ctx: &mut RequestCtx) {
    ctx.client_request_id = session
        .req_header()
        .headers
        .get(crate::client_request_id::CLIENT_HEADER)
        .and_then(|v| crate::client_request_id::sanitize(v.as_bytes()));
}

/// A stored-response route: the key's requests-per-minute and concurrency apply (no tokens:
/// nothing is generated); then the replica holding the id. The request (and any body) passes
/// as the client sent it.
async fn admit_stored(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
    path: &str,
) -> Result<bool> {
    let ticket = match admit_key_early(state, ctx) {
        Ok(ticket) => ticket,
        Err(e) => return reject(session, ctx, rate_limited(e), true).await,
    };
    match super::responses::admit_stored(state, ctx, endpoint, path) {
        Ok(()) => {
            ctx.admission.key_ticket = ticket;
            Ok(false)
        }
        Err(e) => reject(session, ctx, e, true).await,
    }
}

/// `/health` is answered before authentication.
fn unreachable_health() -> Result<bool> {
    Err(pingora_core::Error::explain(
        pingora_core::ErrorType::InternalError,
        "health handled earlier",
    ))
}

async fn answer(session: &mut Session, ctx: &mut RequestCtx, body: Bytes) -> Result<bool> {
    ctx.outcome.local_status = Some(200);
    write_json(session, 200, &[], body, ctx.ids(), false).await?;
    Ok(true)
}

/// Answer with an error. `body_unread`: the request body was not (fully) read, so the
/// connection closes after the answer. The rest of the body is discarded as it arrives (never
/// stored) for a bounded time first, so a client that writes its whole body before reading
/// still gets the answer instead of a reset connection.
async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    error: ApiError,
    body_unread: bool,
) -> Result<bool> {
    ctx.outcome.local_status = Some(error.status());
    let unread = body_unread && may_have_body(session);
    let protocol = routing::protocol_for(ctx.endpoint, session.req_header().uri.path());
    write_error(session, &error, protocol, ctx.ids(), unread).await?;
    if unread && !body::expects_continue(session) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, session.drain_request_body()).await;
    }
    ctx.outcome.failure = Some(error);
    Ok(true)
}

/// How long a refused upload may keep sending before we hang up.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn may_have_body(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Why admission stopped short of the upstream.
enum Refusal {
    /// Answer the client with this error. `body_unread`: the body was not (fully) read.
    Answer { error: ApiError, body_unread: bool },
    /// The client connection failed while sending its body; nothing can be written.
    ClientGone(Box<pingora_core::Error>),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal::Answer {
            error,
            body_unread: false,
        }
    }
}

/// Everything the upstream attempts of an admitted request need.
struct Plan {
    route: Arc<Route>,
    reservation: Reserved,
    prefix_key: Option<u64>,
    prefix_blocks: Vec<u64>,
    upstream_body: Bytes,
    /// The client's body is beyond Pingora's replay buffer: our wrapper replays it.
    needs_replay: bool,
}

/// A proxied endpoint: plan the request, then either hand it to the upstream phases or
/// answer the refusal (the one exit).
async fn prepare_upstream(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
) -> Result<bool> {
    match plan(state, session, ctx, endpoint).await {
        Ok(plan) => {
            start_upstream(session, ctx, plan);
            Ok(false)
        }
        Err(refusal) => refuse(session, ctx, refusal).await,
    }
}

/// Answer a refusal (or give up on a client that is gone).
async fn refuse(session: &mut Session, ctx: &mut RequestCtx, refusal: Refusal) -> Result<bool> {
    match refusal {
        Refusal::Answer { error, body_unread } => reject(session, ctx, error, body_unread).await,
        Refusal::ClientGone(e) => Err(e),
    }
}

/// Read the body, scan it, apply the rules, resolve the alias, reserve against the limits and
/// rewrite the body for the chosen cluster.
async fn plan(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
) -> Result<Plan, Refusal> {
    let ticket = match admit_key_early(state, ctx) {
        Ok(ticket) => ticket,
        // A rule may yet put the request in a class, which the key's limits do not bind:
        // decided after the rules (the key's limits then apply in step 5).
        Err(_) if !ctx.config.rules.rate_limit_classes().is_empty() => None,
        Err(e) => {
            return Err(Refusal::Answer {
                error: rate_limited(e),
                body_unread: true,
            })
        }
    };
    let client_body = read_body(state, session, ctx).await?;
    let client_body = super::ollama::translate_request(ctx, endpoint, client_body)?;
    let scan = BodyScan::parse(client_body.as_slice()).map_err(ApiError::from)?;
    let facts = routing::endpoint_facts(endpoint, &scan);
    let facts = &*facts;
    routing::check_body(endpoint, facts).map_err(ApiError::from)?;
    let decision = super::rules_eval::apply_rules(session, ctx, facts)?;
    let mut route = resolve(ctx, facts, decision.route_cluster.as_deref())?;
    served(endpoint, &route, ctx.admission.ollama.as_ref())?;
    if endpoint == Endpoint::Responses {
        route = super::responses::pin_previous(state, ctx, &scan, route)?;
    }
    let reservation = reserve(state, ctx, facts, &route, ticket)?;
    let prefix_key = (route.cluster.balance.policy == Policy::PrefixAffinity)
        .then(|| affinity_key(session, &scan, &route));
    let prefix_blocks = if route.cluster.balance.policy == Policy::Scored {
        scored_blocks(&scan)
    } else {
        Vec::new()
    };
    let edits = rewrite(ctx, &scan, &route, decision.body_sets);
    let needs_replay = client_body.len() > PINGORA_REPLAY_LIMIT || session.retry_buffer_truncated();
    Ok(Plan {
        route,
        reservation,
        prefix_key,
        prefix_blocks,
        upstream_body: client_body.apply(&edits),
        needs_replay,
    })
}

/// Step 1: the whole body, bounded in size and time; waiting for it is not our overhead.
/// Every byte is reserved in the process-wide body budget first.
async fn read_body(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<RequestBody, Refusal> {
    let server = &ctx.config.server;
    let limits = body::BodyLimits {
        max_bytes: server.max_request_body_bytes,
        timeout: server.client_body_timeout,
        budget: server.body_budget,
    };
    let key_name = ctx.admission.key.as_ref().map(|k| k.name.as_str());
    let mut lease = state.body_budget.lease(key_name);
    let read_started = std::time::Instant::now();
    let read = body::read_bounded(session, &limits, &mut lease).await;
    ctx.timing.body_wait = read_started.elapsed();
    let client_body = read.map_err(|e| match e {
        BodyReadError::Reject(error) => Refusal::Answer {
            error,
            body_unread: true,
        },
        BodyReadError::Client(e) => Refusal::ClientGone(e),
    })?;
    ctx.admission.client_body_len = client_body.len();
    ctx.admission.body_lease = Some(lease);
    Ok(client_body)
}

/// Step 4: the alias's route, with a rule's cluster override applied. A model the key may not
/// use is answered exactly like one that does not exist, so keys cannot probe which models
/// are configured.
fn resolve(
    ctx: &RequestCtx,
    facts: &RequestFacts,
    route_cluster: Option<&str>,
) -> Result<Arc<Route>, ApiError> {
    let allowed = ctx
        .admission
        .key
        .as_ref()
        .is_none_or(|k| k.allows_model(&facts.model));
    if !allowed {
        return Err(ApiError::ModelNotFound {
            model: facts.model.clone(),
        });
    }
    let route = routing::resolve(&ctx.config, &facts.model)?.clone();
    match route_cluster.and_then(|name| ctx.config.cluster(name)) {
        Some(cluster) => Ok(Arc::new(Route {
            cluster: cluster.clone(),
            ..(*route).clone()
        })),
        None => Ok(route),
    }
}

/// Step 4b: the chosen cluster's servers must serve the endpoint (not a replica's 404).
fn served(
    endpoint: Endpoint,
    route: &Route,
    ollama: Option<&super::ollama::OllamaCall>,
) -> Result<(), ApiError> {
    let flavour = route.cluster.flavour;
    let served = match ollama {
        Some(call) => route.cluster.serves.contains(call.surface()),
        None => endpoint.served_by(route.cluster.serves),
    };
    if served {
        return Ok(());
    }
    Err(ApiError::EndpointNotServed {
        model: route.alias.clone(),
        endpoint: endpoint.path(),
        cluster: route.cluster.name.clone(),
        flavour: flavour.as_str(),
    })
}

/// Step 5: reserve the estimate against the key, model and global buckets (`ticket`: the
/// key's part, taken from the headers before the body was read), or a rule's class's.
fn reserve(
    state: &AppState,
    ctx: &RequestCtx,
    facts: &RequestFacts,
    route: &Route,
    ticket: Option<KeyTicket>,
) -> Result<Reserved, ApiError> {
    if let Some(class) = limit_class::of(ctx) {
        if let Some(ticket) = ticket {
            ticket.cancel(std::time::Instant::now());
        }
        let estimated = estimated_tokens(ctx, facts);
        return limit_class::admit(state, ctx, class, route, estimated).map_err(rate_limited);
    }
    let main = admit_limits(state, ctx, facts, route, ticket).map_err(rate_limited)?;
    Ok(Reserved { main, class: None })
}

fn rate_limited(e: Box<RateLimited>) -> ApiError {
    crate::metrics::RATE_LIMITED
        .with_label_values(&[e.limit.as_str()])
        .inc();
    ApiError::RateLimited(e)
}

/// Step 0: the key's concurrency slot and requests-per-minute, known from the headers:
/// applied before a byte of body is buffered.
fn admit_key_early(
    state: &AppState,
    ctx: &RequestCtx,
) -> std::result::Result<Option<KeyTicket>, Box<RateLimited>> {
    let Some(key) = ctx.admission.key.as_ref().filter(|k| !k.limits.is_empty()) else {
        return Ok(None);
    };
    let request = AdmissionRequest {
        key_name: &key.name,
        key_limits: &key.limits,
        model: "-",
        model_limits: &ModelLimits::default(),
        global_limits: &GlobalLimits::default(),
        estimated_tokens: 0,
    };
    let now = std::time::Instant::now();
    state.limiter.admit_key(&request, now).map(Some)
}

/// Step 6: the edits that make the body the replica gets. OpenAI streams are metered from the
/// upstream's own usage chunk: ask for it, and strip it again unless the client asked for it.
/// Messages streams always carry usage (`message_start`, `message_delta`): nothing to add.
fn rewrite(
    ctx: &mut RequestCtx,
    scan: &BodyScan<'_>,
    route: &Route,
    body_sets: Vec<(String, String)>,
) -> Vec<BodyEdit> {
    let facts = scan.facts();
    ctx.admission.stream = facts.stream == Some(true);
    ctx.admission.prompt_bytes = facts.prompt_bytes;
    let openai_stream = ctx.admission.stream && ctx.protocol() == Protocol::OpenAi;
    let mut plan = RewritePlan::new(scan)
        .model(&route.served_name)
        .ensure_stream_usage(openai_stream);
    for (key, raw) in body_sets {
        plan = plan.set_field_raw(&key, raw);
    }
    ctx.admission.strip_usage = plan.stream_usage() == StreamUsage::Injected;
    plan.body_edits()
}

/// Hand an admitted request to the upstream phases.
fn start_upstream(session: &mut Session, ctx: &mut RequestCtx, plan: Plan) {
    ctx.admission.in_flight_gauge =
        Some(InFlightGauge::hold(&ctx.config, &plan.route.cluster.name));
    ctx.admission.route = Some(plan.route);
    ctx.admission.reservation = plan.reservation.main;
    ctx.admission.class_reservation = plan.reservation.class;
    ctx.admission.prefix_key = plan.prefix_key;
    ctx.admission.prefix_blocks = plan.prefix_blocks;
    // Bodies beyond Pingora's replay buffer are served to the proxy loop by our wrapper;
    // `logging` hands the real session back (client keep-alive).
    if plan.needs_replay {
        ctx.admission.replay_home = Some(replay::install(
            &mut session.downstream_session,
            plan.upstream_body.clone(),
        ));
    }
    ctx.admission.upstream_body = Some(plan.upstream_body);
}

/// Reserve the request's estimated tokens against the key, model and global buckets.
fn admit_limits(
    state: &AppState,
    ctx: &RequestCtx,
    facts: &RequestFacts,
    route: &Route,
    ticket: Option<KeyTicket>,
) -> std::result::Result<Option<Reservation>, Box<RateLimited>> {
    let no_key_limits = KeyLimits::default();
    let key_limits = ctx
        .admission
        .key
        .as_ref()
        .map_or(&no_key_limits, |k| &k.limits);
    let unlimited = key_limits.is_empty()
        && route.limits == ModelLimits::default()
        && ctx.config.global_limits == GlobalLimits::default();
    if unlimited {
        return Ok(None);
    }
    let request = AdmissionRequest {
        key_name: ctx.key_label(),
        key_limits,
        model: &route.alias,
        model_limits: &route.limits,
        global_limits: &ctx.config.global_limits,
        estimated_tokens: estimated_tokens(ctx, facts),
    };
    let now = std::time::Instant::now();
    match ticket {
        Some(ticket) => state.limiter.admit_after(ticket, &request, now),
        None => state.limiter.admit(&request, now),
    }
    .map(Some)
}

/// The tokens a request reserves: its prompt estimate plus its completion budget.
fn estimated_tokens(ctx: &RequestCtx, facts: &RequestFacts) -> u64 {
    let reservation_default = ctx
        .config
        .auth
        .as_ref()
        .map_or(256, |a| a.default_completion_reservation);
    let completion_budget = facts
        .max_completion_tokens
        .or(facts.max_tokens)
        .map(|m| m.saturating_mul(facts.n.unwrap_or(1).max(1)));
    estimate_request_tokens(facts.prompt_bytes, completion_budget, reservation_default)
}

/// How many leading bytes of the prompt identify a shared prefix (system prompt and the first
/// messages) for `prefix-affinity`.
const AFFINITY_PREFIX_BYTES: usize = 2048;

/// The cluster's affinity header if the client sent it, else the prompt's leading bytes.
fn affinity_key(session: &Session, scan: &BodyScan<'_>, route: &Route) -> u64 {
    if let Some(value) = route
        .cluster
        .affinity_header
        .as_ref()
        .and_then(|name| session.req_header().headers.get(name))
    {
        return prefix_key(value.as_bytes());
    }
    let prompt = ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| scan.raw_value(k))
        .unwrap_or("");
    let bytes = prompt.as_bytes();
    prefix_key(&bytes[..bytes.len().min(AFFINITY_PREFIX_BYTES)])
}
/// The `scored` policy's prompt blocks: `system` (Messages) then the prompt's raw JSON.
fn scored_blocks(scan: &BodyScan<'_>) -> Vec<u64> {
    let system = scan.raw_value("system").unwrap_or("");
    let prompt = ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| scan.raw_value(k))
        .unwrap_or("");
    joined_block_hashes(&[system.as_bytes(), prompt.as_bytes()])
}
