//! Reading the client's request body in `request_filter`, bounded in size and time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use crate::errors::ApiError;
use crate::ratelimit::body_budget::{BodyLease, BudgetLimits, BudgetRefusal};
use crate::routing::body::{RequestBody, SpareBody};

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

/// Limits for one body read.
pub struct BodyLimits {
    /// Largest accepted body.
    pub max_bytes: u64,
    /// The whole body must arrive within this (not per piece: a client dribbling a byte a
    /// second is cut at the deadline).
    pub timeout: Duration,
    /// Process-wide budget of body bytes in memory, and this key's share.
    pub budget: BudgetLimits,
}

/// Read the whole request body, refusing more than `limits.max_bytes` bytes. A declared
/// `Content-Length` over the limit is refused before reading anything. Every byte is reserved
/// in `lease` before it is stored; the buffer grows as bytes arrive, never sized from a
/// declared length (1 000 clients declaring 16 MB and sending nothing must cost nothing).
pub async fn read_bounded(
    session: &mut Session,
    limits: &BodyLimits,
    lease: &mut BodyLease,
) -> Result<RequestBody, BodyReadError> {
    let limit = limits.max_bytes;
    let declared = declared_length(session);
    if let Some(size) = declared {
        if size > limit {
            return Err(BodyReadError::Reject(ApiError::BodyTooLarge {
                size,
                limit,
            }));
        }
        // Reserved (not allocated) up front: the budget decides before a byte is read, so
        // the excess gets its 503 at once and the admitted uploads can finish.
        lease
            .grow(size, limits.budget)
            .map_err(|refusal| match refusal {
                BudgetRefusal::NeverFits { limit } => {
                    BodyReadError::Reject(ApiError::BodyTooLarge { size, limit })
                }
                BudgetRefusal::Busy => BodyReadError::Reject(ApiError::BodyBudgetBusy),
            })?;
    }
    // Must happen before the first read, so Pingora keeps a replay copy of small bodies.
    session.enable_retry_buffering();
    if expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(BodyReadError::Client)?;
    }
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut buf = Pieces::default();
    loop {
        let read = tokio::time::timeout_at(deadline, session.read_request_body()).await;
        let piece = match read {
            Ok(Ok(piece)) => piece,
            Ok(Err(e)) => return Err(read_error(e)),
            Err(_) => return Err(BodyReadError::Reject(ApiError::ClientBodyTimeout)),
        };
        let Some(piece) = piece else { break };
        if (buf.len() + piece.len()) as u64 > limit {
            return Err(BodyReadError::Reject(ApiError::BodyTooLargeStreaming {
                limit,
            }));
        }
        // Chunked bodies (or a client sending past its declared length) reserve as they grow.
        let needed = (buf.len() + piece.len()) as u64;
        if needed > lease.held() {
            lease
                .grow(needed - lease.held(), limits.budget)
                .map_err(|refusal| BodyReadError::Reject(refused(refusal)))?;
        }
        buf.push(piece);
    }
    Ok(buf.into_body())
}

/// The pieces of a body as Pingora hands them over (each already its own exact-size copy): a
/// one-piece body is used as it is, a longer one is joined once into an allocation of its
/// exact size (growing one buffer as pieces arrive copied a 1 MiB body about twice over).
/// Small pieces are gathered in `tail` so that a client dribbling bytes costs no per-piece
/// overhead.
#[derive(Default)]
struct Pieces {
    pieces: Vec<Bytes>,
    tail: BytesMut,
    len: usize,
}

/// Pieces below this are copied into the tail (a piece's own overhead is ~64 bytes).
const SMALL_PIECE: usize = 16 * 1024;

impl Pieces {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        // The first piece is kept as it is (a one-piece body is never copied).
        let first = self.pieces.is_empty() && self.tail.is_empty();
        if piece.len() < SMALL_PIECE && !first {
            self.tail.extend_from_slice(&piece);
            return;
        }
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail).freeze();
            self.pieces.push(tail);
        }
        if !piece.is_empty() {
            self.pieces.push(piece);
        }
    }

    fn into_body(mut self) -> RequestBody {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail).freeze();
            self.pieces.push(tail);
        }
        if self.pieces.len() <= 1 {
            return RequestBody::Whole(self.pieces.pop().unwrap_or_default());
        }
        // Joined with room around it: the model rewrite then edits it in place.
        let mut body = SpareBody::with_capacity(self.len);
        for piece in &self.pieces {
            body.extend_from_slice(piece);
        }
        RequestBody::Spare(body)
    }
}

fn refused(refusal: BudgetRefusal) -> ApiError {
    match refusal {
        BudgetRefusal::Busy => ApiError::BodyBudgetBusy,
        BudgetRefusal::NeverFits { limit } => ApiError::BodyTooLargeStreaming { limit },
    }
}

/// A malformed chunked body is the client's fault (400); anything else on the client side means
/// the client is gone.
fn read_error(mut e: Box<pingora_core::Error>) -> BodyReadError {
    if e.etype().as_str() == "InvalidChunk" {
        return BodyReadError::Reject(ApiError::InvalidRequestFraming(
            "malformed chunked request body".to_string(),
        ));
    }
    e.as_down();
    BodyReadError::Client(e)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(pieces: &[&[u8]]) -> (Bytes, usize) {
        let mut all = Pieces::default();
        for p in pieces {
            all.push(Bytes::copy_from_slice(p));
        }
        let stored = all.pieces.len() + usize::from(!all.tail.is_empty());
        assert_eq!(all.len(), pieces.iter().map(|p| p.len()).sum::<usize>());
        (all.into_body().into_bytes(), stored)
    }

    #[test]
    fn pieces_join_in_order_and_small_ones_share_one_buffer() {
        assert_eq!(joined(&[]).0, Bytes::new());
        assert_eq!(joined(&[b"abc"]), (Bytes::from_static(b"abc"), 1));
        let dribble: Vec<&[u8]> = vec![b"x"; 1000];
        let (body, stored) = joined(&dribble);
        assert_eq!(
            (body.len(), stored),
            (1000, 2),
            "the first piece and one buffer"
        );
        let big = vec![7u8; SMALL_PIECE * 2];
        let (body, stored) = joined(&[b"{", &big, b"mid", &big, b"}"]);
        assert_eq!(stored, 5);
        let mut want = b"{".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"mid");
        want.extend_from_slice(&big);
        want.extend_from_slice(b"}");
        assert_eq!(body, want);
    }
}
