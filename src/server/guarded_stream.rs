//! A client connection as the proxy sees it: the real stream plus its place under the
//! connection caps and a deadline for each request header (issue #13).
//!
//! Pingora waits for request headers read by read (60 s each, reset by every byte), so a client
//! sending one byte a minute holds a connection, a task and buffers forever. This wrapper arms a
//! deadline when a connection opens and again when the first byte of a later request arrives,
//! and disarms it at the header's empty line. When it passes:
//! - nothing was sent yet: the read ends as a close, which Pingora treats as a client leaving;
//! - part of a header was sent: the client gets a JSON `408` with `Connection: close`, then
//!   Pingora is handed one byte no header may contain, so it abandons the request on its quiet
//!   path (a parse error, logged at debug) instead of logging an ERROR per slow client, and the
//!   empty `400` it answers with is discarded.
//!
//! The same recognition replaces Pingora's own parse-level `400` (an empty body) with a JSON
//! one, so clients of malformed requests get an error in the shape they parse.
//!
//! HTTP/2 connections (ALPN `h2` or the cleartext preface) have no header deadline here:
//! HTTP/2 has its own settings and streams.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::ratelimit::connections::ConnectionPermit;

/// Answer to a header that missed its deadline.
const HEADER_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 114\r\n\r\n\
{\"error\":{\"message\":\"request header not received in time\",\"type\":\"invalid_request_error\",\"code\":\"header_timeout\"}}";

/// Answer to a request Pingora could not parse (replaces its empty `400`).
const MALFORMED_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 111\r\n\r\n\
{\"error\":{\"message\":\"malformed HTTP request header\",\"type\":\"invalid_request_error\",\"code\":\"malformed_request\"}}";

/// What an HTTP/2 cleartext (prior knowledge) connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A byte no request line or header may contain (httparse rejects it everywhere).
const INVALID_HEADER_BYTE: &[u8] = b"\x00";

/// Finds the empty line that ends a request header, across reads of any size. Leading empty
/// lines before the request line are skipped, as HTTP/1.1 allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderEnd {
    started: bool,
    at_line_start: bool,
}

impl HeaderEnd {
    /// Feed the next bytes; `true` once the header's empty line has been seen.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if self.started && self.at_line_start => return true,
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => {
                    self.started = true;
                    self.at_line_start = false;
                }
            }
        }
        false
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading a request header; the deadline runs. `seen`: a byte of it has arrived.
    Header { seen: bool, end: HeaderEnd },
    /// Header complete: the body and the response are the proxy's (body deadline included).
    Request,
    /// A final response began: the next byte read starts a new request.
    Idle,
    /// HTTP/2: no header deadline here.
    Inert,
    /// Sending `out`, then closing.
    Answering,
    /// Answered: Pingora's reads get one invalid byte then the end; its writes are discarded.
    Closing { fed: bool },
}

/// The client stream handed to Pingora.
pub struct GuardedStream {
    inner: Stream,
    _permit: ConnectionPermit,
    on_close: Option<Box<dyn FnOnce() + Send + Sync>>,
    header_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    phase: Phase,
    /// A canned answer being written, and how much of it is out.
    out: &'static [u8],
    out_pos: usize,
    header_timeouts: Option<prometheus::IntCounter>,
    /// Bytes read while peeking for the HTTP/2 preface, handed out before new reads.
    replay: Vec<u8>,
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl GuardedStream {
    /// Wrap a freshly accepted (and, for TLS, handshaken) client connection.
    pub fn new(inner: Stream, permit: ConnectionPermit, header_timeout: Duration) -> Self {
        let http2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        GuardedStream {
            inner,
            _permit: permit,
            on_close: None,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            phase: if http2 {
                Phase::Inert
            } else {
                Phase::Header {
                    seen: false,
                    end: HeaderEnd::default(),
                }
            },
            out: &[],
            out_pos: 0,
            header_timeouts: None,
            replay: Vec::new(),
        }
    }

    /// Run `f` when the connection closes (the open-connections gauge).
    pub fn on_close(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_close = Some(Box::new(f));
        self
    }

    /// Count header deadlines that passed with part of a header sent.
    pub fn count_header_timeouts(mut self, counter: prometheus::IntCounter) -> Self {
        self.header_timeouts = Some(counter);
        self
    }

    /// Bytes arrived from the client: move the phase along.
    fn observe_read(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        match &mut self.phase {
            Phase::Header { seen, end } => {
                if !*seen && new.starts_with(b"PRI ") {
                    self.phase = Phase::Inert;
                    return;
                }
                *seen = true;
                if end.feed(new) {
                    self.phase = Phase::Request;
                }
            }
            Phase::Idle => {
                let mut end = HeaderEnd::default();
                if end.feed(new) {
                    self.phase = Phase::Request;
                } else {
                    let next = Instant::now() + self.header_timeout;
                    self.deadline.as_mut().reset(next);
                    self.phase = Phase::Header { seen: true, end };
                }
            }
            Phase::Request | Phase::Inert | Phase::Answering | Phase::Closing { .. } => {}
        }
    }

    /// Start sending a canned answer in place of anything Pingora writes from now on.
    fn answer(&mut self, response: &'static [u8]) {
        self.out = response;
        self.out_pos = 0;
        self.phase = Phase::Answering;
    }

    /// Write out the canned answer; `Ready(Ok)` once it is all out and flushed.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.phase = Phase::Closing { fed: false };
        Poll::Ready(Ok(()))
    }

    /// The deadline passed: what the pending read returns.
    fn poll_deadline_passed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        seen: bool,
    ) -> Poll<io::Result<()>> {
        if !seen {
            // Nothing sent: end the connection as if the client had closed it.
            self.phase = Phase::Closing { fed: true };
            return Poll::Ready(Ok(()));
        }
        if let Some(counter) = &self.header_timeouts {
            counter.inc();
        }
        self.answer(HEADER_TIMEOUT_RESPONSE);
        self.poll_closing_read(cx, buf)
    }

    /// Reads while answering or closing.
    fn poll_closing_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.phase, Phase::Answering) {
            // A client that stopped reading must not keep this open: it is dropped as closed.
            if ready!(self.poll_answer(cx)).is_err() {
                self.phase = Phase::Closing { fed: false };
            }
        }
        if let Phase::Closing { fed } = &mut self.phase {
            if !*fed && buf.remaining() > 0 {
                *fed = true;
                buf.put_slice(INVALID_HEADER_BYTE);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Pingora's generated error header for a request it could not parse: `400`, no body,
/// `Cache-Control: private, no-store` (`pingora_core::protocols::http::error_resp`).
fn is_pingora_parse_error(bytes: &[u8]) -> bool {
    let lower: Vec<u8> = bytes.iter().take(512).map(u8::to_ascii_lowercase).collect();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    lower.starts_with(b"http/1.1 400 ")
        && has(b"\r\ncontent-length: 0\r\n")
        && has(b"\r\ncache-control: private, no-store\r\n")
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Answering | Phase::Closing { .. } => return this.poll_closing_read(cx, buf),
            Phase::Header { seen, .. } => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.poll_deadline_passed(cx, buf, seen);
                }
            }
            Phase::Request | Phase::Idle | Phase::Inert => {}
        }
        let before = buf.filled().len();
        if this.replay.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.drain(..n);
        }
        this.observe_read(buf.filled().get(before..).unwrap_or_default());
        Poll::Ready(Ok(()))
    }
}

/// The start of a final (not `1xx`) response: after it, the next bytes read begin a new request.
fn is_final_status_line(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HTTP/1.") && bytes.get(9).is_some_and(|d| (b'2'..=b'5').contains(d))
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Answering => {
                ready!(this.poll_answer(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
            Phase::Closing { .. } => return Poll::Ready(Ok(buf.len())),
            Phase::Header { .. } | Phase::Request if is_pingora_parse_error(buf) => {
                this.answer(MALFORMED_RESPONSE);
                ready!(this.poll_answer(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
            Phase::Request if is_final_status_line(buf) => {
                this.phase = Phase::Idle;
            }
            Phase::Header { .. } | Phase::Request | Phase::Idle | Phase::Inert => {}
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Answering) {
            ready!(this.poll_answer(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Answering) {
            ready!(this.poll_answer(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One slice at a time keeps the phase logic in `poll_write`.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if let Some(f) = self.on_close.take() {
            f();
        }
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        if matches!(self.phase, Phase::Answering) {
            let _ = std::future::poll_fn(|cx| self.poll_answer(cx)).await;
        }
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    /// Pingora's h2c check (`HttpServerOptions::h2c`) peeks for the HTTP/2 preface before
    /// reading. Its own peek waits for all 24 bytes, so an HTTP/1 header shorter than that, or
    /// arriving slowly, would wait out the header deadline and be closed without an answer.
    /// This one reads only while the bytes can still be the preface: on the first byte that
    /// rules it out, at the end of the stream or at the header deadline it answers with what
    /// was read, zero-padded (never the preface), so HTTP/1 goes on at once and the deadline
    /// is enforced by the reads as without h2c. What was read is handed out again first.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if !matches!(self.phase, Phase::Header { .. }) {
            return self.inner.try_peek(buf).await;
        }
        let deadline = self.deadline.deadline();
        let mut chunk = [0u8; 1024];
        while self.replay.len() < buf.len() && H2_PREFACE.starts_with(&self.replay) {
            match tokio::time::timeout_at(deadline, self.inner.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => self.replay.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
        buf.fill(0);
        let n = self.replay.len().min(buf.len());
        buf[..n].copy_from_slice(&self.replay[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> bool {
        let mut end = HeaderEnd::default();
        chunks.iter().any(|c| end.feed(c))
    }

    #[test]
    fn the_header_end_is_found_across_any_split() {
        let header =
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        for cut in 0..header.len() {
            let (a, b) = header.split_at(cut);
            assert!(ends(&[a, b]), "split at {cut}");
        }
        for cut in 0..header.len() - 4 {
            assert!(
                !ends(&[&header[..cut]]),
                "{cut} bytes are not a whole header"
            );
        }
        assert!(ends(&[b"GET / HTTP/1.1\nhost: x\n\n"]), "bare LF line ends");
        assert!(!ends(&[b"\r\n\r\n"]), "leading empty lines are skipped");
        assert!(ends(&[b"\r\nGET / HTTP/1.1\r\n\r\n"]));
    }

    #[test]
    fn pingoras_empty_400_is_recognised_and_nothing_else() {
        let pingora = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: x\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n";
        assert!(is_pingora_parse_error(pingora));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 80\r\n\r\n";
        assert!(!is_pingora_parse_error(ours));
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\n\r\n";
        assert!(!is_pingora_parse_error(ok));
    }

    #[test]
    fn the_canned_answers_declare_their_exact_length() {
        for response in [HEADER_TIMEOUT_RESPONSE, MALFORMED_RESPONSE] {
            let text = std::str::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{head}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(json["error"]["code"].is_string());
        }
    }
}
