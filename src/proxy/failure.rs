//! `fail_to_proxy` and `logging`: turn Pingora's final error into the client's OpenAI-shaped
//! answer, and record how the request ended.

use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::ctx::RequestCtx;
use super::respond::write_error;
use super::upstream;
use crate::errors::ApiError;

/// What the client should hear about `e`; `None` when the client itself is gone.
pub fn classify(e: &Error, ctx: &mut RequestCtx) -> Option<ApiError> {
    if let Some(decided) = ctx.failure.take() {
        return Some(decided);
    }
    let model = ctx.model_label().to_string();
    let detail = e.etype().as_str().to_string();
    Some(match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            ApiError::UpstreamTimeout { model }
        }
        ErrorType::ConnectTimedout => ApiError::UpstreamTimeout { model },
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout => ApiError::UpstreamUnreachable { model, detail },
        ErrorType::HTTPStatus(code) => match code {
            503 => ApiError::NoReplicaAvailable {
                model,
                cluster: ctx
                    .route
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |r| r.cluster.name.clone()),
            },
            _ => ApiError::UpstreamFailed { model, detail },
        },
        _ => match e.esource() {
            ErrorSource::Upstream => ApiError::UpstreamFailed { model, detail },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                    return None
                }
                ErrorType::ReadTimedout => ApiError::ClientBodyTimeout,
                _ => ApiError::InvalidRequestFraming(e.etype().as_str().to_string()),
            },
            ErrorSource::Internal | ErrorSource::Unset => ApiError::Internal(detail),
        },
    })
}

pub async fn answer(session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
    let Some(error) = classify(e, ctx) else {
        return FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        };
    };
    let status = error.status();
    if session.response_written().is_none() {
        if let Err(write_err) = write_error(session, &error, &ctx.request_id, true).await {
            log::debug!("could not send error response: {write_err}");
        }
    } else if let Some(tail) = upstream::tail_after_upstream_failure(ctx) {
        // Mid-stream: the status is gone; end the stream with an error event so SDK clients
        // raise instead of taking a cut stream for a complete one.
        if let Err(write_err) = session.write_response_body(Some(tail), true).await {
            log::debug!("could not send the truncation event: {write_err}");
        }
    }
    ctx.local_status = Some(status);
    ctx.failure = Some(error);
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}

/// Settle the request: its usage record (also for streams cut by either side), metrics and
/// one log line (the structured access log comes with the observability work).
pub fn log_request(session: &Session, e: Option<&Error>, ctx: &mut RequestCtx) {
    let status = ctx
        .local_status
        .or(ctx.upstream_status)
        .or_else(|| session.response_written().map(|r| r.status.as_u16()))
        .unwrap_or(0);
    let model = ctx.model_label().to_string();
    if let Some(meter) = ctx.meter.as_mut() {
        let usage = meter.finish(std::time::Instant::now());
        crate::metrics::record_usage(&model, &usage);
        ctx.usage = Some(usage);
    }
    crate::metrics::record_request(
        &model,
        ctx.route.as_ref().map_or("-", |r| r.cluster.name.as_str()),
        status,
        ctx.started.elapsed().as_secs_f64(),
    );
    let usage = ctx.usage.as_ref();
    log::info!(
        "request_id={} method={} path={} model={} cluster={} replica={} status={} attempts={} \
         body_in={} body_out={} prompt_tokens={} completion_tokens={} usage_source={} \
         truncated={} ttft_ms={} duration_ms={:.3}{}",
        ctx.request_id,
        session.req_header().method,
        session.req_header().uri.path(),
        model,
        ctx.route.as_ref().map_or("-", |r| r.cluster.name.as_str()),
        ctx.replica.as_deref().unwrap_or("-"),
        status,
        ctx.attempts,
        ctx.client_body_len,
        ctx.response_bytes,
        usage.map_or(0, |u| u.prompt_tokens),
        usage.map_or(0, |u| u.completion_tokens),
        usage.map_or("none", |u| u.source.as_str()),
        usage.is_some_and(|u| u.truncated),
        usage.and_then(|u| u.ttft).map_or_else(
            || "-".to_string(),
            |t| format!("{:.3}", t.as_secs_f64() * 1000.0)
        ),
        ctx.started.elapsed().as_secs_f64() * 1000.0,
        e.map(|e| format!(" error={}", e.etype().as_str()))
            .unwrap_or_default(),
    );
}
