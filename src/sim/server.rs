//! Connection handling and routing (hyper 1, HTTP/1.1 keep-alive).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::engine::Job;
use super::generate::{choice_text, embedding_vector};
use super::metrics::{self, Load};
use super::request::{
    decode_body, parse_request, Endpoint, GenerationDefaults, InferenceRequest, RequestError,
    RequestSummary, MAX_MODEL_LEN,
};
use super::responses::{self, Completed, ErrorCase, StreamShape};
use super::state::{Outcome, RecordedBody, RequestRecord, RequestTracker};
use super::stream::{start_stream, Pacer, Pacing, StreamPlan};
use super::{control, App, Flavour};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a full buffer or a live stream.
pub type SimBody = BoxBody<Bytes, BoxError>;

/// Largest accepted request body (tests send 16 MiB embedding inputs).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// uvicorn's idle keep-alive timeout, as used by vLLM and trtllm-serve.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(5);
const JSON: &str = "application/json";
/// Cap on `x-sim-tokens`, so a typo cannot make a non-streaming answer exhaust memory.
const MAX_TOKENS_OVERRIDE: u64 = 1_000_000;
const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// Accepts connections until `shutdown` flips, then drops every open connection.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Without TCP_NODELAY, Nagle holds small SSE events back ~40 ms.
                    if let Err(error) = stream.set_nodelay(true) {
                        log::warn!("set_nodelay failed for {peer}: {error}");
                    }
                    let app = Arc::clone(&app);
                    connections.spawn(serve_connection(stream, app));
                }
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    log::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    connections.abort_all();
}

async fn serve_connection(stream: tokio::net::TcpStream, app: Arc<App>) {
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(handle(app, request).await) }
    });
    // The header-read timer starts whenever the connection waits for a new request,
    // so it doubles as the idle keep-alive timeout.
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(KEEP_ALIVE_IDLE)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = result {
        log::debug!("connection ended: {error}");
    }
}

async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<SimBody> {
    let mut response = route(&app, request).await;
    if let Ok(replica) = HeaderValue::from_str(&app.replica) {
        response.headers_mut().insert("x-sim-replica", replica);
    }
    response
}

async fn route(app: &Arc<App>, request: Request<Incoming>) -> Response<SimBody> {
    let flavour = app.config.flavour;
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if path.starts_with("/sim/") {
        return control::handle(app, request).await;
    }
    if let Some(endpoint) = Endpoint::from_path(&path) {
        let vllm_only = endpoint.is_anthropic() || endpoint == Endpoint::Responses;
        if vllm_only && flavour != Flavour::Vllm {
            return not_found();
        }
        return if method == Method::POST {
            inference(app, endpoint, request).await
        } else {
            method_not_allowed()
        };
    }
    if flavour == Flavour::Vllm && path.starts_with("/v1/responses/") {
        return stored_response(app, &method, &path);
    }
    if method != Method::GET {
        return if is_get_route(flavour, &path) {
            method_not_allowed()
        } else {
            not_found()
        };
    }
    match (flavour, path.as_str()) {
        (Flavour::Vllm | Flavour::Trtllm, "/health") => health(app),
        (Flavour::TritonOpenai, "/health/ready" | "/v2/health/ready" | "/v2/health/live") => {
            triton_health(app, &path)
        }
        (_, "/v1/models") => {
            let body = responses::models_response(
                flavour,
                &app.config.served_model_names,
                unix_now(),
                MAX_MODEL_LEN,
            );
            full_response(StatusCode::OK, Some(JSON), body)
        }
        (_, "/metrics") | (Flavour::Trtllm, "/prometheus/metrics") => {
            let load = match &app.engine {
                Some(engine) => Load::from_engine(engine.stats()),
                None => Load::from_in_flight(app.state.in_flight(), app.config.max_running),
            };
            let model = app
                .config
                .served_model_names
                .first()
                .map_or("", String::as_str);
            full_response(
                StatusCode::OK,
                Some("text/plain; version=0.0.4; charset=utf-8"),
                metrics::render(flavour, model, load),
            )
        }
        _ => not_found(),
    }
}

/// The GET routes `flavour` serves (besides `/sim/`), for 405 vs 404 like FastAPI.
fn is_get_route(flavour: Flavour, path: &str) -> bool {
    matches!(
        (flavour, path),
        (_, "/v1/models" | "/metrics")
            | (Flavour::Vllm, "/health")
            | (Flavour::Trtllm, "/health" | "/prometheus/metrics")
            | (
                Flavour::TritonOpenai,
                "/health/ready" | "/v2/health/ready" | "/v2/health/live"
            )
    )
}

/// vLLM's stored-response routes: `GET`/`DELETE /v1/responses/{id}`,
/// `POST /v1/responses/{id}/cancel` (only background responses can be cancelled: vLLM answers
/// a stored synchronous one 400 "Cannot cancel a synchronous response.").
fn stored_response(app: &App, method: &Method, path: &str) -> Response<SimBody> {
    let rest = path.trim_start_matches("/v1/responses/");
    let (id, cancel) = match rest.strip_suffix("/cancel") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if id.is_empty() || id.contains('/') {
        return not_found();
    }
    let missing = || {
        let (status, body) = super::responses_api::not_found(id);
        full_response(status, Some(JSON), body)
    };
    match (method.as_str(), cancel) {
        ("GET", false) => match app.stored.get(id) {
            Some(body) => full_response(StatusCode::OK, Some(JSON), body),
            None => missing(),
        },
        ("POST", true) => match app.stored.get(id) {
            Some(_) => full_response(
                StatusCode::BAD_REQUEST,
                Some(JSON),
                super::responses_api::cannot_cancel(),
            ),
            None => missing(),
        },
        ("DELETE", false) if app.stored.remove(id) => full_response(
            StatusCode::OK,
            Some(JSON),
            super::responses_api::deleted(id),
        ),
        ("DELETE", false) => missing(),
        _ => method_not_allowed(),
    }
}

fn not_found() -> Response<SimBody> {
    full_response(
        StatusCode::NOT_FOUND,
        Some(JSON),
        responses::detail("Not Found"),
    )
}

fn health(app: &App) -> Response<SimBody> {
    if !app.state.faults().health_failing {
        return full_response(StatusCode::OK, None, Bytes::new());
    }
    let body = match app.config.flavour {
        Flavour::Trtllm => "LLM is unavailable. Please check the server logs for more details.",
        _ => "",
    };
    full_response(StatusCode::SERVICE_UNAVAILABLE, None, body)
}

fn triton_health(app: &App, path: &str) -> Response<SimBody> {
    let failing = app.state.faults().health_failing;
    match (failing, path) {
        (false, _) => full_response(StatusCode::OK, None, Bytes::new()),
        (true, "/health/ready") => full_response(
            StatusCode::BAD_REQUEST,
            Some(JSON),
            responses::detail("Attached inference engine is not ready for inference requests."),
        ),
        (true, _) => full_response(StatusCode::BAD_REQUEST, None, Bytes::new()),
    }
}

fn method_not_allowed() -> Response<SimBody> {
    full_response(
        StatusCode::METHOD_NOT_ALLOWED,
        Some(JSON),
        responses::detail("Method Not Allowed"),
    )
}

/// Per-request overrides of the command-line timing and length, for tests.
#[derive(Debug, Default)]
struct Overrides {
    tokens: Option<u64>,
    ttft_ms: Option<u64>,
    itl_ms: Option<u64>,
}

impl Overrides {
    fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let number = |name: &str| -> Result<Option<u64>, String> {
            match headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .map(Some)
                    .ok_or_else(|| format!("header {name} must be a non-negative integer")),
            }
        };
        let tokens = number("x-sim-tokens")?;
        if tokens.is_some_and(|tokens| tokens > MAX_TOKENS_OVERRIDE) {
            return Err(format!(
                "header x-sim-tokens must be at most {MAX_TOKENS_OVERRIDE}"
            ));
        }
        Ok(Self {
            tokens,
            ttft_ms: number("x-sim-ttft-ms")?,
            itl_ms: number("x-sim-itl-ms")?,
        })
    }
}

#[allow(clippy::too_many_lines)] // the simulator is a test tool (outside the 80-line rule)
async fn inference(
    app: &Arc<App>,
    endpoint: Endpoint,
    request: Request<Incoming>,
) -> Response<SimBody> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let x_request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            log::warn!("failed to read request body: {error}");
            return full_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(JSON),
                responses::detail("Request body unreadable or larger than 64 MiB"),
            );
        }
    };
    let decoded = decode_body(&body);
    let summary = decoded
        .as_ref()
        .map(RequestSummary::from_body)
        .unwrap_or_default();
    let decoded_prompt = match (&app.engine, &decoded) {
        (Some(_), Ok(body)) => prompt_text(body),
        _ => None,
    };
    let tracker = app.state.begin_request(RequestRecord::new(
        &app.replica,
        parts.uri.path(),
        summary,
        x_request_id.clone(),
        header_map(headers),
        RecordedBody::of(&body),
    ));
    let faults = app.state.faults();
    if let Some(stall) = faults.stall_ms {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }

    let reply = Reply {
        flavour: app.config.flavour,
        anthropic: endpoint.is_anthropic(),
        x_request_id: x_request_id.as_deref(),
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(JSON) {
        let message = "Unsupported Media Type: Only 'application/json' is allowed";
        return reply.error(tracker, &ErrorCase::Invalid(message.into()));
    }
    let overrides = match Overrides::from_headers(headers) {
        Ok(overrides) => overrides,
        Err(message) => return reply.error(tracker, &ErrorCase::Invalid(message)),
    };
    let defaults = GenerationDefaults {
        default_tokens: app.config.tokens,
        tokens_override: overrides.tokens,
        seed: app.config.seed,
    };
    let parsed = decoded.and_then(|body| {
        parse_request(
            app.config.flavour,
            endpoint,
            &body,
            &app.config.served_model_names,
            defaults,
        )
    });
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(RequestError::Invalid(message)) => {
            return reply.error(tracker, &ErrorCase::Invalid(message))
        }
        Err(RequestError::UnknownModel(name)) => {
            return reply.error(tracker, &ErrorCase::UnknownModel(name))
        }
    };
    tracker.set_prompt_tokens(parsed.prompt_tokens);
    // vLLM looks the previous response up in this replica's store: another's id is 404.
    if let Some(previous) = parsed
        .responses
        .as_ref()
        .and_then(|r| r.previous_response_id.as_deref())
        .filter(|id| app.stored.get(id).is_none())
    {
        let (status, body) = super::responses_api::not_found(previous);
        tracker.set_status(status.as_u16());
        tracker.finish(Outcome::Ok);
        return reply.with_headers(status, Some(JSON), full_body(body));
    }

    if app.state.take_fail_next() || faults.error_status.is_some() {
        let status = faults
            .error_status
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let case = ErrorCase::Injected {
            status,
            empty_body: faults.empty_error_body,
        };
        return reply.error(tracker, &case);
    }

    let pacing = match &app.engine {
        Some(engine) => Pacing::Engine {
            engine: Arc::clone(engine),
            job: engine_job(decoded_prompt.as_deref(), &parsed),
        },
        None => Pacing::Fixed {
            ttft: Duration::from_millis(overrides.ttft_ms.unwrap_or(app.config.ttft_ms)),
            itl: Duration::from_millis(overrides.itl_ms.unwrap_or(app.config.itl_ms)),
        },
    };
    let request_id = x_request_id.clone().unwrap_or_else(random_hex_id);
    let created = unix_now();
    if parsed.stream {
        let plan = StreamPlan {
            shape: StreamShape {
                flavour: app.config.flavour,
                endpoint,
                id: response_id(endpoint, &request_id),
                created,
                model: parsed.response_model.clone(),
            },
            request: parsed,
            pacing,
            cut_after_tokens: faults.cut_after_tokens,
            midstream_error_after: faults.midstream_error_after,
            store: (endpoint == Endpoint::Responses).then(|| Arc::clone(&app.stored)),
        };
        tracker.set_status(StatusCode::OK.as_u16());
        let body = start_stream(plan, tracker)
            .map_err(|error| Box::new(error) as BoxError)
            .boxed();
        return reply.with_headers(StatusCode::OK, Some(EVENT_STREAM), body);
    }

    // Non-streaming answers arrive when the whole generation would have finished. Counting
    // tokens generates nothing.
    if endpoint != Endpoint::CountTokens {
        wait_for_generation(pacing, parsed.tokens_per_choice).await;
    }
    let body = non_streaming_body(
        app,
        endpoint,
        &parsed,
        &response_id(endpoint, &request_id),
        created,
    );
    reply.success(tracker, &parsed, body)
}

/// Sleeps as long as generating `tokens` would take (one sleep for fixed delays).
async fn wait_for_generation(pacing: Pacing, tokens: u64) {
    match pacing {
        Pacing::Fixed { ttft, itl } => {
            let later_tokens = u32::try_from(tokens.saturating_sub(1)).unwrap_or(u32::MAX);
            let total = itl
                .checked_mul(later_tokens)
                .and_then(|decode| decode.checked_add(ttft))
                .unwrap_or(Duration::MAX);
            // A zero-length sleep still waits for the next 1 ms timer tick: skip it.
            if !total.is_zero() {
                tokio::time::sleep(total).await;
            }
        }
        engine => {
            let mut pacer = Pacer::new(engine);
            pacer.first_token().await;
            for _ in 1..tokens {
                pacer.next_token().await;
            }
        }
    }
}

/// The engine's view of a request: its prompt text (the JSON of `messages`, `prompt` or
/// `input`, plus Anthropic's `system`) and how many tokens it may generate.
fn engine_job(prompt: Option<&str>, parsed: &InferenceRequest) -> Job {
    let max_output = parsed
        .tokens_per_choice
        .saturating_mul(u64::from(parsed.choices));
    Job::from_prompt(prompt.unwrap_or("").as_bytes(), max_output)
}

/// The prompt text the prefix cache sees, from the decoded body.
fn prompt_text(body: &serde_json::Value) -> Option<String> {
    let mut text = String::new();
    for key in ["system", "messages", "prompt", "input"] {
        if let Some(value) = body.get(key) {
            text.push_str(&value.to_string());
        }
    }
    (!text.is_empty()).then_some(text)
}

fn non_streaming_body(
    app: &App,
    endpoint: Endpoint,
    parsed: &InferenceRequest,
    id: &str,
    created: u64,
) -> String {
    let flavour = app.config.flavour;
    if endpoint == Endpoint::Embeddings {
        let vectors: Vec<Vec<f32>> = parsed
            .embedding_inputs
            .iter()
            .map(|fingerprint| {
                embedding_vector(parsed.seed, *fingerprint, app.config.embedding_dim)
            })
            .collect();
        return responses::embedding_response(
            flavour,
            id,
            created,
            &parsed.response_model,
            &vectors,
            parsed.prompt_tokens,
        );
    }
    let texts: Vec<String> = (0..parsed.choices)
        .map(|choice| choice_text(parsed.seed, choice, parsed.tokens_per_choice))
        .collect();
    let done = Completed {
        request: parsed,
        id,
        created,
        texts: &texts,
    };
    match endpoint {
        Endpoint::Chat => responses::chat_response(flavour, &done),
        Endpoint::Messages => super::anthropic::message_response(parsed, id, &texts[0]),
        Endpoint::CountTokens => super::anthropic::count_tokens_response(parsed.prompt_tokens),
        Endpoint::Responses => {
            let fields = parsed.responses.clone().unwrap_or_default();
            let shape = super::responses_api::Shape {
                id,
                created,
                model: &parsed.response_model,
                fields: &fields,
            };
            super::responses_api::complete(&shape, parsed, &texts[0], &app.stored)
        }
        _ => responses::completion_response(flavour, &done),
    }
}

/// Builds inference responses and closes their records.
struct Reply<'a> {
    flavour: Flavour,
    /// Errors in Anthropic's shape (the Messages routes).
    anthropic: bool,
    x_request_id: Option<&'a str>,
}

impl Reply<'_> {
    fn with_headers(
        &self,
        status: StatusCode,
        content_type: Option<&str>,
        body: SimBody,
    ) -> Response<SimBody> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        if let Some(value) = content_type.and_then(|value| HeaderValue::from_str(value).ok()) {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
        if let Some(id) = self
            .x_request_id
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            response.headers_mut().insert("x-request-id", id);
        }
        response
    }

    fn error(&self, tracker: RequestTracker, case: &ErrorCase) -> Response<SimBody> {
        let (status, body) = if self.anthropic {
            super::anthropic::error_response(case)
        } else {
            responses::error_response(self.flavour, case)
        };
        tracker.set_status(status.as_u16());
        tracker.finish(Outcome::Ok);
        match body {
            Some(body) => self.with_headers(status, Some(JSON), full_body(body)),
            // vLLM 0.11's engine-death 500 has neither body nor content type.
            None => self.with_headers(status, None, empty_body()),
        }
    }

    fn success(
        &self,
        mut tracker: RequestTracker,
        parsed: &InferenceRequest,
        body: String,
    ) -> Response<SimBody> {
        tracker.set_status(StatusCode::OK.as_u16());
        if parsed.endpoint != Endpoint::Embeddings {
            tracker.add_completion_tokens(parsed.tokens_per_choice * u64::from(parsed.choices));
        }
        tracker.finish(Outcome::Ok);
        self.with_headers(StatusCode::OK, Some(JSON), full_body(body))
    }
}

fn response_id(endpoint: Endpoint, request_id: &str) -> String {
    let prefix = match endpoint {
        // vLLM's Messages answers carry the chat completion's id.
        Endpoint::Chat | Endpoint::Messages => "chatcmpl",
        Endpoint::CountTokens => "count",
        Endpoint::Completions => "cmpl",
        Endpoint::Embeddings => "embd",
        // vLLM's `resp_` + a fresh uuid (not the request id).
        Endpoint::Responses => return format!("resp_{}", random_hex_id()),
    };
    format!("{prefix}-{request_id}")
}

/// 32 hex digits, like vLLM's `random_uuid()`.
fn random_hex_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

pub fn full_body(body: impl Into<Bytes>) -> SimBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty_body() -> SimBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full_response(
    status: StatusCode,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    if let Some(value) = content_type.and_then(|value| HeaderValue::from_str(value).ok()) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
