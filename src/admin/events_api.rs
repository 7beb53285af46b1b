//! `GET /admin/events`: the live event stream as Server-Sent Events (`text/event-stream`).
//! First a `hello` event (generation and every replica), then what the hub broadcasts:
//! `health`, `reload` and the once-a-second `summary`. A client that falls behind the hub's
//! buffer, or does not take a write within [`WRITE_TIMEOUT`], is sent `dropped` (if it can
//! take it) and disconnected; the proxy never waits for it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::reply::error_reply;
use crate::events::{frame, Frame, MAX_SUBSCRIBERS};
use crate::state::AppState;

/// A write the client does not take within this drops it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve one event stream until the client leaves, lags, or the server shuts down.
pub async fn stream(state: &AppState, mut http: ServerSession, mut shutdown: ShutdownWatch) {
    http.set_keepalive(None);
    let Some(mut subscription) = state.events.subscribe() else {
        let reply = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{MAX_SUBSCRIBERS} event streams are open; close one and retry."),
            "too_many_event_streams",
        );
        super::server::write_reply(http, reply).await;
        return;
    };
    if !start(&mut http).await {
        return;
    }
    let hello = frame(
        "hello",
        &json!({
            "generation": state.generation(),
            "replicas": state.fleet.snapshot(Instant::now()),
        }),
    );
    if !send(&mut http, &hello).await {
        return;
    }
    loop {
        let next = tokio::select! {
            next = subscription.rx.recv() => next,
            _ = shutdown.changed() => return,
        };
        match next {
            Ok(event) => {
                if !send(&mut http, &event).await {
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                log::info!("event stream client fell {missed} events behind; dropped");
                let _ = send(&mut http, &frame("dropped", &json!({ "missed": missed }))).await;
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn start(http: &mut ServerSession) -> bool {
    let Ok(mut header) = ResponseHeader::build(StatusCode::OK, Some(4)) else {
        return false;
    };
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("transfer-encoding", "chunked"),
        ("x-accel-buffering", "no"),
    ] {
        if header.insert_header(name, value).is_err() {
            return false;
        }
    }
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, http.write_response_header(Box::new(header))).await,
        Ok(Ok(()))
    )
}

async fn send(http: &mut ServerSession, event: &Frame) -> bool {
    let bytes = Bytes::copy_from_slice(event.as_bytes());
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, http.write_response_body(bytes, false)).await,
        Ok(Ok(()))
    )
}
