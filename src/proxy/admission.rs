//! `request_filter`: decide what a request is and prepare everything the upstream attempt needs,
//! or answer it ourselves.

use bytes::Bytes;
use pingora_core::Result;
use pingora_proxy::Session;

use super::body::{self, BodyReadError, PINGORA_REPLAY_LIMIT};
use super::ctx::RequestCtx;
use super::replay;
use super::respond::{write_error, write_json};
use crate::errors::ApiError;
use crate::routing::body::{BodyScan, RewritePlan, StreamUsage};
use crate::routing::{self, Endpoint};

/// Returns `Ok(true)` when the response was written here.
pub async fn admit(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    // Pingora keeps idle client connections forever unless told otherwise.
    session.set_keepalive(Some(ctx.config.server.client_keepalive_seconds));
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    let endpoint = match routing::classify(&method, &path) {
        Ok(endpoint) => endpoint,
        Err(e) => return reject(session, ctx, e, true).await,
    };
    ctx.endpoint = Some(endpoint);
    match endpoint {
        Endpoint::Health => {
            let body = Bytes::from_static(br#"{"status":"ok"}"#);
            answer(session, ctx, body).await
        }
        Endpoint::ListModels => {
            let body = routing::models_list_json(&ctx.config);
            answer(session, ctx, body).await
        }
        Endpoint::RetrieveModel => {
            let alias = path.trim_end_matches('/').trim_start_matches("/v1/models/");
            match routing::model_json(&ctx.config, &percent_decode(alias)) {
                Ok(body) => answer(session, ctx, body).await,
                Err(e) => reject(session, ctx, e, false).await,
            }
        }
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
            prepare_upstream(session, ctx).await
        }
    }
}

async fn answer(session: &mut Session, ctx: &mut RequestCtx, body: Bytes) -> Result<bool> {
    ctx.local_status = Some(200);
    write_json(session, 200, &[], body, &ctx.request_id, false).await?;
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
    ctx.local_status = Some(error.status());
    let unread = body_unread && may_have_body(session);
    write_error(session, &error, &ctx.request_id, unread).await?;
    if unread && !body::expects_continue(session) {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, session.drain_request_body()).await;
    }
    ctx.failure = Some(error);
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

/// Read the body, resolve the alias and rewrite the body for the chosen cluster.
async fn prepare_upstream(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let server = &ctx.config.server;
    let read_started = std::time::Instant::now();
    let read = body::read_bounded(
        session,
        server.max_request_body_bytes,
        server.client_body_timeout,
    )
    .await;
    ctx.body_wait = read_started.elapsed();
    let client_body = match read {
        Ok(b) => b,
        Err(BodyReadError::Reject(e)) => return reject(session, ctx, e, true).await,
        Err(BodyReadError::Client(e)) => return Err(e),
    };
    ctx.client_body_len = client_body.len();

    let scan = match BodyScan::parse(&client_body) {
        Ok(scan) => scan,
        Err(e) => return reject(session, ctx, e.into(), false).await,
    };
    let facts = scan.facts();
    let route = match routing::resolve(&ctx.config, &facts.model) {
        Ok(route) => route.clone(),
        Err(e) => return reject(session, ctx, e, false).await,
    };
    ctx.stream = facts.stream == Some(true);
    ctx.prompt_bytes = facts.prompt_bytes;
    // Streams are metered from the upstream's own usage chunk: ask for it, and strip it again
    // unless the client asked for it itself.
    let plan = RewritePlan::new(&scan)
        .model(&route.served_name)
        .ensure_stream_usage(ctx.stream);
    ctx.strip_usage = plan.stream_usage() == StreamUsage::Injected;
    let upstream_body = plan.apply();
    crate::metrics::IN_FLIGHT
        .with_label_values(&[&route.cluster.name])
        .inc();
    ctx.in_flight_cluster = Some(route.cluster.name.clone());
    ctx.route = Some(route);

    // Bodies beyond Pingora's replay buffer are served to the proxy loop by our wrapper;
    // smaller ones keep the plain session (and client keep-alive).
    if client_body.len() > PINGORA_REPLAY_LIMIT || session.retry_buffer_truncated() {
        replay::install(&mut session.downstream_session, upstream_body.clone());
    }
    ctx.upstream_body = Some(upstream_body);
    Ok(false)
}

/// Minimal percent-decoding for model ids in paths (`org%2Fmodel`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_keeps_bad_ones() {
        assert_eq!(percent_decode("org%2Fm"), "org/m");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("é%"), "é%");
    }
}
