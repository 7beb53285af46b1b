//! The Pingora `ProxyHttp` implementation: a thin switchboard. Each hook calls into the module
//! that owns the concern and maps the outcome; the logic lives elsewhere.

pub mod admission;
pub mod body;
pub mod client_response;
pub mod ctx;
pub mod failure;
pub mod limit_class;
pub mod ollama;
pub mod peer;
pub mod queue_wait;
pub mod replay;
pub mod respond;
pub mod responses;
pub mod rules_eval;
pub mod settle;
pub mod upstream_request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::state::AppState;
pub use ctx::RequestCtx;

pub struct TokenGate {
    state: Arc<AppState>,
}

impl TokenGate {
    pub fn new(state: Arc<AppState>) -> TokenGate {
        TokenGate { state }
    }
}

#[async_trait]
impl ProxyHttp for TokenGate {
    type CTX = RequestCtx;

    /// One config snapshot per request, kept for its whole life.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.state.snapshot())
    }

    /// Admission: classify, answer local endpoints, read + validate + rewrite the body.
    /// `Ok(true)` means we already answered.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let started = Instant::now();
        let answered = admission::admit(&self.state, session, ctx).await;
        // Waiting for the client's body is not our time.
        ctx.timing.overhead += started.elapsed().saturating_sub(ctx.timing.body_wait);
        answered
    }

    /// Start of every attempt: the next untried replica of the route's cluster; a saturated
    /// cluster with a queue makes the first attempt wait for a slot.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        queue_wait::choose_peer(session, ctx).await
    }

    /// A refused or timed-out connect is retried on another replica while any is untried.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        peer::on_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        peer::on_proxy_error(peer, ctx, e, client_reused)
    }

    /// Every attempt: Host, framing for the rewritten body, ids; the client's credentials
    /// never reach a replica.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.timed(|ctx| upstream_request::prepare_request(request, ctx))
    }

    /// Substitute the rewritten body for whatever Pingora replays (once per attempt).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request::substitute_body(body, end_of_stream, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        peer::on_upstream_response_header(response, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let version = session.req_header().version;
        // Before the client can see the DELETE's answer (and ask again), the id is forgotten.
        responses::forget_deleted(&self.state, ctx, response.status.as_u16());
        ctx.timed(|ctx| client_response::on_response_header(response, ctx, version))
    }

    /// Synchronous, per piece: bytes pass through as they land.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        ctx.timed(|ctx| {
            client_response::check_total_deadline(ctx, end_of_stream)?;
            client_response::on_response_body(body, end_of_stream, ctx);
            responses::learn_id(&self.state, ctx);
            Ok(None)
        })
    }

    /// The final error of any phase, as an OpenAI-shaped JSON error.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        failure::answer(session, e, ctx).await
    }

    /// A client that hung up is counted (499 `client_closed`), not logged at ERROR per event.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        failure::client_gone(e)
    }

    /// Runs before Pingora's `finish()`: the replay wrapper (bodies > 64 KiB) hands the real
    /// client session back first, so the connection can be kept alive.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(home) = ctx.admission.replay_home.take() {
            replay::restore(&mut session.downstream_session, &home);
        }
        settle::settle(&self.state, session, e, ctx);
    }
}
