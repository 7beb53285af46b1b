//! Replaying a request body larger than Pingora's 64 KiB retry buffer.
//!
//! Pingora 0.9.1 forwards a body already read in `request_filter` only from the downstream
//! session's retry buffer, which is capped at 64 KiB (`BODY_BUF_LIMIT`); above that the
//! upstream never receives the body. [`ReplayedBodySession`] wraps the real downstream session
//! through pingora-core's public custom-session hook and reports the body as fully read with our
//! rewritten bytes as its retry buffer. Pingora's normal proxy loop then sends it on every
//! attempt, so retries, body filters, response filters and metering are the same as for small
//! bodies. Everything else is delegated to the real session.
//!
//! A custom session cannot hand its stream back for keep-alive (`finish()` of one yields
//! nothing reusable), so the wrapper gives the real session back instead: dropping it moves the
//! inner session into a [`ReplayHome`] the request context holds, and [`restore`] (called from
//! `logging`, which Pingora runs before `finish()`) puts it back in the proxy session. The
//! client connection then stays alive as after a small body. The body sits in memory, bounded
//! by `server.max_request_body_bytes`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use http::HeaderMap;
use pingora_core::protocols::http::custom::server::Session as CustomSession;
use pingora_core::protocols::http::custom::CustomMessageWrite;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Digest;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

pub struct ReplayedBodySession {
    inner: ServerSession,
    body: Bytes,
    home: ReplayHome,
}

/// Where the real downstream session goes when the wrapper is dropped, for [`restore`].
#[derive(Clone, Default)]
pub struct ReplayHome(Arc<Mutex<Option<ServerSession>>>);

impl ReplayHome {
    fn put(&self, session: ServerSession) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
    }

    fn take(&self) -> Option<ServerSession> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A placeholder session for the instants between swaps; never used for I/O (its methods are
/// unreachable in pingora-core, so it must never stay installed).
fn placeholder() -> ServerSession {
    ServerSession::new_custom(Box::new(()))
}

/// Swap the proxy session's downstream for a wrapper that replays `body` as the request body.
/// Keep the returned home in the request context and [`restore`] it in `logging`.
pub fn install(downstream: &mut Box<ServerSession>, body: Bytes) -> ReplayHome {
    let home = ReplayHome::default();
    // Nothing runs between the two swaps.
    let inner = std::mem::replace(downstream.as_mut(), placeholder());
    **downstream = ServerSession::new_custom(Box::new(ReplayedBodySession {
        inner,
        body,
        home: home.clone(),
    }));
    home
}

/// Put the real downstream session back in place of the wrapper, so `finish()` can keep the
/// client connection alive. The wrapper's `Drop` moves the session into `home`.
pub fn restore(downstream: &mut Box<ServerSession>, home: &ReplayHome) {
    if !downstream.is_custom() {
        return;
    }
    let wrapper = std::mem::replace(downstream.as_mut(), placeholder());
    drop(wrapper);
    match home.take() {
        Some(real) => **downstream = real,
        // Not reachable: dropping the wrapper always fills the home. Logged should it change.
        None => log::error!("replay: the downstream session was not handed back"),
    }
}

impl Drop for ReplayedBodySession {
    fn drop(&mut self) {
        self.home
            .put(std::mem::replace(&mut self.inner, placeholder()));
    }
}

#[async_trait]
impl CustomSession for ReplayedBodySession {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        // The body was consumed before the wrapper was installed.
        Ok(None)
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.inner.write_response_header(resp).await?;
        if end {
            self.inner.finish_body().await?;
        }
        Ok(())
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        self.inner.write_response_header_ref(resp).await?;
        if end {
            self.inner.finish_body().await?;
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.inner.write_response_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.inner.write_response_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        self.inner.response_duplex_vec(tasks).await
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_read_timeout(timeout)
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.inner.get_read_timeout()
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.inner.shutdown().await
    }

    fn is_body_done(&mut self) -> bool {
        true
    }

    async fn finish(&mut self) -> Result<()> {
        self.inner.finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body.is_empty()
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        // Delegated so a client that disconnects mid-response is still noticed.
        self.inner.read_body_or_idle(no_body_expected).await
    }

    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.to_h1_raw()
    }

    fn enable_retry_buffering(&mut self) {}

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body.clone())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>> {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
