//! The prober's small HTTP client: one GET per fresh connection (`Connection: close`), one
//! overall deadline, a capped body; hyper's low-level client.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const USER_AGENT_VALUE: &str = concat!("tokengate-probe/", env!("CARGO_PKG_VERSION"));

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// TCP connect failed (refused, unreachable, ...).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Connect, request and body together took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// Invalid request, malformed response, connection closed early.
    #[error("http error: {0}")]
    Http(String),
    /// The body was longer than the caller's cap.
    #[error("response body too large")]
    BodyTooLarge,
}

fn http_err(e: impl fmt::Display) -> ProbeError {
    ProbeError::Http(e.to_string())
}

/// `GET path` from `addr` over a fresh connection (TCP_NODELAY, `Connection: close`).
/// `timeout` bounds everything (connect, request, whole body); a body longer than `max_body`
/// fails with [`ProbeError::BodyTooLarge`]. Returns the status and the decoded body
/// (chunked transfer coding removed) whatever the status.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Bytes), ProbeError> {
    match tokio::time::timeout(timeout, get_inner(addr, host, path, max_body)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn get_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    max_body: usize,
) -> Result<(u16, Bytes), ProbeError> {
    let req = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(format!("invalid request: {e}")))?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    // Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let exchange = async move {
        sender.ready().await.map_err(http_err)?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if body.size_hint().lower() > max_body as u64 {
            return Err(ProbeError::BodyTooLarge); // Content-Length says so already
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http_err)?;
            if let Ok(data) = frame.into_data() {
                if buf.len().saturating_add(data.len()) > max_body {
                    return Err(ProbeError::BodyTooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((status, buf.freeze()))
    };
    // Drive the connection in this same future (no detached task), so the caller's timeout
    // or cancellation drops the socket with it.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        _ = &mut conn => {
            // The connection finished (or failed) first; whatever it delivered or the error it
            // reported is now in the exchange's channels.
            exchange.await
        }
    }
}
