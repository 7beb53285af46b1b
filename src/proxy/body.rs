//! Reading the client's request body in `request_filter`, bounded in size and time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use crate::errors::ApiError;

/// Why the body could not be read.
pub enum BodyReadError {
    /// Answer the client with this error (connection not reusable: body not fully read).
    Reject(ApiError),
    /// The client connection failed; nothing can be written.
    Client(Box<pingora_core::Error>),
}

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core): bodies up to this size are
/// replayed by Pingora itself; larger ones need [`super::replay`].
pub const PINGORA_REPLAY_LIMIT: usize = 64 * 1024;

/// Read the whole request body, refusing more than `limit` bytes. A declared
/// `Content-Length` over the limit is refused before reading anything.
pub async fn read_bounded(
    session: &mut Session,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyReadError> {
    let declared = declared_length(session);
    if let Some(size) = declared {
        if size > limit {
            return Err(BodyReadError::Reject(ApiError::BodyTooLarge {
                size,
                limit,
            }));
        }
    }
    // Must happen before the first read, so Pingora keeps a replay copy of small bodies.
    session.enable_retry_buffering();
    if expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(BodyReadError::Client)?;
    }
    // `declared` ≤ limit here; chunked bodies grow as they come.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024) as usize);
    loop {
        let piece = match tokio::time::timeout(timeout, session.read_request_body()).await {
            Ok(Ok(piece)) => piece,
            Ok(Err(e)) => return Err(BodyReadError::Client(e)),
            Err(_) => return Err(BodyReadError::Reject(ApiError::ClientBodyTimeout)),
        };
        let Some(piece) = piece else { break };
        if (buf.len() + piece.len()) as u64 > limit {
            return Err(BodyReadError::Reject(ApiError::BodyTooLargeStreaming {
                limit,
            }));
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}

fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
