//! `fail_to_proxy` and `logging`: turn Pingora's final error into the client's OpenAI-shaped
//! answer, and record how the request ended.

use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::client_response;
use super::ctx::RequestCtx;
use super::respond::write_error;
use crate::errors::ApiError;

/// What the client should hear about `e`; `None` when the client itself is gone.
pub fn classify(e: &Error, ctx: &mut RequestCtx) -> Option<ApiError> {
    if let Some(decided) = ctx.outcome.failure.take() {
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
                    .admission
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

/// Status logged for a request whose client went away before its answer was complete.
pub const CLIENT_CLOSED: u16 = 499;

/// The client hung up or broke its connection (mid-body or mid-stream): its fault, nothing to
/// answer, not an upstream or server failure and not worth an ERROR line per event.
pub fn client_gone(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && (matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        ) || e.etype().as_str() == "PrematureBodyEnd")
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
        if let Err(write_err) = write_error(session, &error, ctx.protocol(), ctx.ids(), true).await
        {
            log::debug!("could not send error response: {write_err}");
        }
        ctx.outcome.local_status = Some(status);
    } else if let Some(tail) = client_response::tail_after_upstream_failure(ctx) {
        // Mid-stream: the status is gone; end the stream with an error event so SDK clients
        // raise instead of taking a cut stream for a complete one.
        if let Err(write_err) = session.write_response_body(Some(tail), true).await {
            log::debug!("could not send the truncation event: {write_err}");
        }
    }
    ctx.outcome.failure = Some(error);
    FailToProxy {
        error_code: status,
        can_reuse_downstream: false,
    }
}
