//! `logging`: the request's end. Settles its usage record (also for streams cut by either
//! side), releases what it held, and records metrics and the access log line.

use std::time::Instant;

use pingora_core::{Error, ErrorType};
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::failure;
use crate::accesslog;
use crate::errors::ApiError;
use crate::metrics;
use crate::routing::Endpoint;
use crate::state::AppState;

pub fn settle(state: &AppState, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    ctx.outcome.client_closed = e.is_some_and(failure::client_gone);
    let status = if ctx.outcome.client_closed {
        failure::CLIENT_CLOSED
    } else {
        ctx.outcome
            .local_status
            .or(ctx.reply.upstream_status)
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0)
    };
    let model = ctx.model_label().to_string();
    let cluster = ctx
        .admission
        .route
        .as_ref()
        .map_or_else(|| "-".to_string(), |r| r.cluster.name.clone());
    // The route's series, looked up once for the usage and the request metrics.
    let snapshot = ctx.config.clone();
    let route = snapshot.route_metrics(&model, &cluster);
    settle_usage(state, ctx, &model, route);
    // Releases the replica slot and the cluster's in-flight gauge.
    ctx.attempt.in_flight = None;
    ctx.admission.in_flight_gauge = None;
    ctx.admission.key_ticket = None;
    let duration = ctx.started.elapsed();
    let series = Series {
        model: &model,
        cluster: &cluster,
        route,
    };
    record_metrics(ctx, e, series, status, duration);
    let entry = access_log_entry(session, e, ctx, model, cluster, status, duration);
    accesslog::write(&entry);
    state.recent.push(entry);
}

/// Finish metering and reconcile the admission estimate with what was metered (a cut stream:
/// what was seen; never reached a replica: nothing).
fn settle_usage(
    state: &AppState,
    ctx: &mut RequestCtx,
    model: &str,
    route: Option<&metrics::handles::RouteMetrics>,
) {
    if let Some(meter) = ctx.reply.meter.as_mut() {
        let mut usage = meter.finish(Instant::now());
        // The client cut it, not the replica: the stream is not "truncated".
        usage.truncated &= !ctx.outcome.client_closed;
        metrics::record_usage(ctx.key_label(), model, &usage, route);
        // A whole stream's first-to-last-token time: how long it held a batch slot after its
        // prefill (cut streams would understate it).
        if !usage.truncated && !ctx.outcome.client_closed && usage.inter_token.count > 0 {
            if let Some(slot) = ctx.attempt.in_flight.as_ref() {
                slot.replica().record_decode(usage.inter_token.total);
            }
        }
        ctx.outcome.stream_error = usage.upstream_error.as_ref().map(|e| {
            let code = e
                .code
                .clone()
                .unwrap_or_else(|| "upstream_error".to_string());
            log::warn!(
                "request {}: replica {} sent an error event mid-stream ({code})",
                ctx.request_id,
                ctx.attempt.replica.as_deref().unwrap_or("-")
            );
            code
        });
        ctx.outcome.usage = Some(usage);
    }
    let (prompt, completion) = ctx
        .outcome
        .usage
        .as_ref()
        .map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
    for reservation in [
        ctx.admission.reservation.take(),
        ctx.admission.class_reservation.take(),
    ]
    .into_iter()
    .flatten()
    {
        reservation.settle(prompt + completion, Instant::now());
    }
    if ctx.admission.route.is_some() {
        let endpoint = ctx.endpoint.map_or("-", Endpoint::as_str);
        state
            .usage
            .record_usage(ctx.key_label(), model, endpoint, prompt, completion);
    }
}

/// A request's model and cluster labels and, when the snapshot has them, their handles.
struct Series<'a> {
    model: &'a str,
    cluster: &'a str,
    route: Option<&'a metrics::handles::RouteMetrics>,
}

fn record_metrics(
    ctx: &RequestCtx,
    e: Option<&Error>,
    series: Series<'_>,
    status: u16,
    duration: std::time::Duration,
) {
    let Series {
        model,
        cluster,
        route,
    } = series;
    if let Some(failure) = ctx.outcome.failure.as_ref() {
        metrics::LOCAL_ERRORS
            .with_label_values(&[failure.metric_code()])
            .inc();
    }
    if ctx.attempt.count > 1 {
        let retries = (ctx.attempt.count - 1) as u64;
        match ctx.config.runtime(cluster) {
            Some(runtime) => runtime.metrics.retries().inc_by(retries),
            None => metrics::RETRIES
                .with_label_values(&[cluster])
                .inc_by(retries),
        }
    }
    let kind = if ctx.outcome.stream_error.is_some() {
        Some("stream_error")
    } else if ctx.outcome.client_closed {
        None
    } else {
        upstream_error_kind(e, ctx.reply.upstream_status)
    };
    if let Some(kind) = kind {
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[cluster, kind])
            .inc();
    }
    let labels = metrics::RequestLabels {
        key: ctx.key_label(),
        model,
        cluster,
        endpoint: ctx.endpoint,
    };
    metrics::record_request(labels, status, duration.as_secs_f64(), route);
    if let Some(endpoint) = ctx.endpoint {
        metrics::handles::proxy_overhead(endpoint).observe(ctx.timing.overhead.as_secs_f64());
    }
}

/// The request's one record: the access log line and the recent-requests ring entry.
fn access_log_entry(
    session: &Session,
    e: Option<&Error>,
    ctx: &RequestCtx,
    model: String,
    cluster: String,
    status: u16,
    duration: std::time::Duration,
) -> accesslog::Entry {
    let usage = ctx.outcome.usage.as_ref();
    accesslog::Entry {
        time: accesslog::now_rfc3339(),
        request_id: ctx.request_id.clone(),
        client_request_id: ctx.client_request_id.clone(),
        method: session.req_header().method.as_str().to_string(),
        path: session.req_header().uri.path().to_string(),
        endpoint: ctx.endpoint.map_or("-", Endpoint::as_str),
        key: ctx.key_label().to_string(),
        model,
        cluster,
        replica: ctx.attempt.replica.as_deref().unwrap_or("-").to_string(),
        status,
        stream: ctx.admission.stream,
        prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
        completion_tokens: usage.map_or(0, |u| u.completion_tokens),
        usage_source: usage.map_or("none", |u| u.source.as_str()),
        truncated: usage.is_some_and(|u| u.truncated),
        ttft_ms: usage.and_then(|u| u.ttft).map(|t| t.as_secs_f64() * 1000.0),
        duration_ms: duration.as_secs_f64() * 1000.0,
        bytes_in: ctx.admission.client_body_len,
        bytes_out: ctx.reply.response_bytes,
        retries: ctx.attempt.count.saturating_sub(1),
        // Our own answer's code (401 `invalid_api_key`, 404 `model_not_found`, ...) when we
        // decided the error; else how Pingora saw the request fail (e.g. the client left).
        // A client that left, or a replica's mid-stream error event, name themselves.
        error: ctx
            .outcome
            .failure
            .as_ref()
            .map(ApiError::log_code)
            .or(ctx.outcome.client_closed.then_some("client_closed"))
            .or(ctx.outcome.stream_error.as_deref())
            .or_else(|| e.map(|e| e.etype().as_str()))
            .map(str::to_string),
        tags: ctx.admission.rules.tags.clone(),
        rules: ctx.admission.rules.matched.clone(),
        rate_limit_class: ctx.admission.rules.rate_limit_class.clone(),
        priority: ctx.admission.rules.priority,
    }
}

/// Bounded kinds for `tokengate_upstream_errors_total`.
fn upstream_error_kind(e: Option<&Error>, upstream_status: Option<u16>) -> Option<&'static str> {
    if let Some(e) = e {
        if e.esource() == &pingora_core::ErrorSource::Upstream
            || matches!(
                e.etype(),
                ErrorType::ConnectRefused
                    | ErrorType::ConnectTimedout
                    | ErrorType::ConnectError
                    | ErrorType::ConnectNoRoute
            )
        {
            return Some(match e.etype() {
                ErrorType::ConnectRefused => "connect_refused",
                ErrorType::ConnectTimedout => "connect_timeout",
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectionClosed => "closed",
                ErrorType::HTTPStatus(c) if *c >= 500 => "http_5xx",
                ErrorType::HTTPStatus(_) => "http_4xx",
                _ => "other",
            });
        }
    }
    match upstream_status {
        Some(s) if s >= 500 => Some("http_5xx"),
        _ => None,
    }
}
