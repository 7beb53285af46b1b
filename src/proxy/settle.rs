//! `logging`: the request's end. Settles its usage record (also for streams cut by either
//! side), releases what it held, and records metrics and the access log line.

use std::time::Instant;

use pingora_core::{Error, ErrorType};
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::failure;
use crate::accesslog;
use crate::metrics;
use crate::state::AppState;

pub fn settle(state: &AppState, session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let client_closed = e.is_some_and(failure::client_gone);
    let status = if client_closed {
        failure::CLIENT_CLOSED
    } else {
        ctx.local_status
            .or(ctx.upstream_status)
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0)
    };
    let model = ctx.model_label().to_string();
    let cluster = ctx
        .route
        .as_ref()
        .map_or_else(|| "-".to_string(), |r| r.cluster.name.clone());
    if let Some(meter) = ctx.meter.as_mut() {
        let mut usage = meter.finish(Instant::now());
        // The client cut it, not the replica: the stream is not "truncated".
        usage.truncated &= !client_closed;
        metrics::record_usage(ctx.key_name.as_deref().unwrap_or("-"), &model, &usage);
        ctx.usage = Some(usage);
    }
    // Reconcile the admission estimate with what was metered (a cut stream: what was seen;
    // never reached a replica: nothing).
    let (prompt, completion) = ctx
        .usage
        .as_ref()
        .map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
    if let Some(reservation) = ctx.reservation.take() {
        reservation.settle(prompt + completion, Instant::now());
    }
    if ctx.route.is_some() {
        state
            .usage
            .record_usage(ctx.key_label(), &model, prompt, completion);
    }
    ctx.in_flight = None;
    if let Some(held) = ctx.in_flight_cluster.take() {
        metrics::IN_FLIGHT.with_label_values(&[&held]).dec();
    }
    if ctx.attempts > 1 {
        metrics::RETRIES
            .with_label_values(&[&cluster])
            .inc_by((ctx.attempts - 1) as u64);
    }
    // A replica's error event mid-stream: the status was 200, but the request failed.
    let stream_error = ctx
        .usage
        .as_ref()
        .and_then(|u| u.upstream_error.as_ref())
        .map(|e| {
            e.code
                .clone()
                .unwrap_or_else(|| "upstream_error".to_string())
        });
    if let Some(code) = &stream_error {
        log::warn!(
            "request {}: replica {} sent an error event mid-stream ({code})",
            ctx.request_id,
            ctx.replica.as_deref().unwrap_or("-")
        );
    }
    let upstream_error = if stream_error.is_some() {
        Some("stream_error")
    } else if client_closed {
        None
    } else {
        upstream_error_kind(e, ctx.upstream_status)
    };
    if let Some(kind) = upstream_error {
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[&cluster, kind])
            .inc();
    }
    let duration = ctx.started.elapsed();
    metrics::record_request(&model, &cluster, status, duration.as_secs_f64());
    if let Some(endpoint) = ctx.endpoint {
        metrics::PROXY_OVERHEAD
            .with_label_values(&[endpoint.as_str()])
            .observe(ctx.overhead.as_secs_f64());
    }

    let usage = ctx.usage.as_ref();
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    accesslog::write(&accesslog::Entry {
        time: accesslog::now_rfc3339(),
        request_id: &ctx.request_id,
        method: &method,
        path: &path,
        key: ctx.key_label(),
        model: &model,
        cluster: &cluster,
        replica: ctx.replica.as_deref().unwrap_or("-"),
        status,
        stream: ctx.stream,
        prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
        completion_tokens: usage.map_or(0, |u| u.completion_tokens),
        usage_source: usage.map_or("none", |u| u.source.as_str()),
        truncated: usage.is_some_and(|u| u.truncated),
        ttft_ms: usage.and_then(|u| u.ttft).map(|t| t.as_secs_f64() * 1000.0),
        duration_ms: duration.as_secs_f64() * 1000.0,
        bytes_in: ctx.client_body_len,
        bytes_out: ctx.response_bytes,
        retries: ctx.attempts.saturating_sub(1),
        error: if client_closed {
            Some("client_closed")
        } else if let Some(code) = stream_error.as_deref() {
            Some(code)
        } else {
            e.map(|e| e.etype().as_str())
        },
        tags: &ctx.tags,
        rules: &ctx.rules_matched,
        rate_limit_class: ctx.rate_limit_class.as_deref(),
        priority: ctx.priority,
    });
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
