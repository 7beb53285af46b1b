//! The streaming (SSE) response: a body fed by a generator task through a channel.
//!
//! Each event is sent as its own body frame, so hyper writes it as soon as it is produced.
//! When hyper drops the body (the client went away) the channel closes, the generator
//! notices at its next send or while sleeping, and stops at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{mpsc, watch};

use super::engine::{Engine, Job, Running};
use super::generate::token_text;
use super::request::{Endpoint, InferenceRequest};
use super::responses::{done_event, midstream_error_event, StreamShape, Usage};
use super::state::{Outcome, RequestTracker};
use super::Flavour;

/// Events buffered between the generator and hyper; small, so a slow reader slows us down.
const CHANNEL_CAPACITY: usize = 16;

/// Message of the injected mid-stream error event.
pub const MIDSTREAM_ERROR_MESSAGE: &str =
    "Simulated mid-stream failure: the engine aborted this request.";

/// The body error that makes hyper abort the connection without the final chunk.
#[derive(Debug, thiserror::Error)]
#[error("simulated connection cut")]
pub struct ConnectionCut;

type StreamItem = Result<Bytes, ConnectionCut>;

/// A response body whose frames come from a channel.
#[derive(Debug)]
pub struct ChannelBody {
    receiver: mpsc::Receiver<StreamItem>,
    delivered: u64,
    /// Frames handed to hyper before it last found the channel empty. hyper flushes its
    /// write buffer right after such a `Pending`, so those frames are on the wire.
    flushed: watch::Sender<Option<u64>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = ConnectionCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnectionCut>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(Ok(event))) => {
                self.delivered += 1;
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            Poll::Ready(Some(Err(cut))) => Poll::Ready(Some(Err(cut))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let delivered = Some(self.delivered);
                self.flushed.send_if_modified(|flushed| {
                    let changed = *flushed != delivered;
                    *flushed = delivered;
                    changed
                });
                Poll::Pending
            }
        }
    }
}

/// Everything the generator needs to produce one stream.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub shape: StreamShape,
    pub request: InferenceRequest,
    pub pacing: Pacing,
    /// Abort the connection after this many token steps.
    pub cut_after_tokens: Option<u64>,
    /// Send the mid-stream error event after this many token steps.
    pub midstream_error_after: Option<u64>,
    /// Responses API streams: where the completed response is stored.
    pub store: Option<std::sync::Arc<super::responses_api::Store>>,
}

/// When tokens are due: fixed delays, or the batching engine's schedule.
#[derive(Debug, Clone)]
pub enum Pacing {
    Fixed { ttft: Duration, itl: Duration },
    Engine { engine: Arc<Engine>, job: Job },
}

/// Paces one request's tokens; holds its batch slot (engine) until dropped.
#[derive(Debug)]
pub struct Pacer {
    pacing: Pacing,
    running: Option<Running>,
}

impl Pacer {
    pub fn new(pacing: Pacing) -> Pacer {
        Pacer {
            pacing,
            running: None,
        }
    }

    /// Waits until the first token is due (queue and prefill for the engine).
    pub async fn first_token(&mut self) {
        match &self.pacing {
            Pacing::Fixed { ttft, .. } => sleep_unless_zero(*ttft).await,
            Pacing::Engine { engine, job } => {
                self.running = Some(engine.start(job.clone()).await);
            }
        }
    }

    /// Waits until the next token is due.
    pub async fn next_token(&mut self) {
        let step = match (&self.pacing, &self.running) {
            (Pacing::Fixed { itl, .. }, _) => *itl,
            (Pacing::Engine { .. }, Some(running)) => running.decode_step(),
            (Pacing::Engine { engine, .. }, None) => engine.decode_step(),
        };
        sleep_unless_zero(step).await;
    }
}

/// A zero-length sleep still waits for the next 1 ms timer tick: skip it.
async fn sleep_unless_zero(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

/// Starts generating in a background task and returns the body that carries it.
pub fn start_stream(plan: StreamPlan, tracker: RequestTracker) -> ChannelBody {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let (flushed, flushed_watch) = watch::channel(None);
    tokio::spawn(async move {
        let mut tracker = tracker;
        let mut pacer = Pacer::new(plan.pacing.clone());
        let mut writer = EventWriter {
            sender,
            sent: 0,
            flushed: flushed_watch,
        };
        let generated = if plan.request.endpoint == Endpoint::Messages {
            super::anthropic::generate(&plan, &mut pacer, &mut tracker, &mut writer).await
        } else if let (Some(fields), Some(store)) = (&plan.request.responses, &plan.store) {
            let shape = super::responses_api::Shape {
                id: &plan.shape.id,
                created: plan.shape.created,
                model: &plan.shape.model,
                fields,
            };
            super::responses_api::generate(
                &plan,
                &shape,
                store,
                &mut pacer,
                &mut tracker,
                &mut writer,
            )
            .await
        } else {
            generate(&plan, &mut pacer, &mut tracker, &mut writer).await
        };
        drop(pacer);
        match generated {
            Ok(outcome) => tracker.finish(outcome),
            // Dropping the tracker unfinished records the abandonment.
            Err(ClientGone) => drop(tracker),
        }
    });
    ChannelBody {
        receiver,
        delivered: 0,
        flushed,
    }
}

/// The receiving side (the client's connection) is gone.
#[derive(Debug)]
pub struct ClientGone;

pub struct EventWriter {
    sender: mpsc::Sender<StreamItem>,
    sent: u64,
    flushed: watch::Receiver<Option<u64>>,
}

impl EventWriter {
    pub async fn send(&mut self, event: Bytes) -> Result<(), ClientGone> {
        self.sender.send(Ok(event)).await.map_err(|_| ClientGone)?;
        self.sent += 1;
        Ok(())
    }

    /// Makes hyper drop the connection mid-body. hyper discards unflushed output when a
    /// body fails, so first wait until everything sent so far is flushed.
    pub async fn abort_connection(&mut self) -> Result<(), ClientGone> {
        let sent = self.sent;
        let Self {
            sender, flushed, ..
        } = self;
        let all_flushed = tokio::select! {
            waited = flushed.wait_for(|flushed| flushed.is_some_and(|n| n >= sent)) => waited.is_ok(),
            _ = sender.closed() => false,
        };
        if !all_flushed {
            return Err(ClientGone);
        }
        self.sender
            .send(Err(ConnectionCut))
            .await
            .map_err(|_| ClientGone)
    }

    /// Runs `wait`, but returns early if the client goes away meanwhile.
    pub async fn during(&mut self, wait: impl Future<Output = ()>) -> Result<(), ClientGone> {
        tokio::select! {
            () = wait => Ok(()),
            _ = self.sender.closed() => Err(ClientGone),
        }
    }
}

async fn generate(
    plan: &StreamPlan,
    pacer: &mut Pacer,
    tracker: &mut RequestTracker,
    writer: &mut EventWriter,
) -> Result<Outcome, ClientGone> {
    let request = &plan.request;
    let shape = &plan.shape;
    let mut sent_tokens = 0u64;
    let running_usage = |completion_tokens| {
        request.usage.every_chunk.then_some(Usage {
            prompt_tokens: request.prompt_tokens,
            completion_tokens,
        })
    };

    if request.endpoint == Endpoint::Chat {
        for choice in 0..request.choices {
            writer
                .send(shape.role_chunk(choice, running_usage(0)))
                .await?;
        }
    }
    writer.during(pacer.first_token()).await?;

    for step in 0..=request.tokens_per_choice {
        if plan.cut_after_tokens == Some(step) {
            writer.abort_connection().await?;
            return Ok(Outcome::Cut);
        }
        if plan.midstream_error_after == Some(step) {
            return fail_midstream(shape.flavour, writer).await;
        }
        if step == request.tokens_per_choice {
            break;
        }
        if step > 0 {
            writer.during(pacer.next_token()).await?;
        }
        for choice in 0..request.choices {
            let text = token_text(request.seed, choice, step);
            sent_tokens += 1;
            tracker.add_completion_tokens(1);
            writer
                .send(shape.content_chunk(choice, text, None, running_usage(sent_tokens)))
                .await?;
        }
    }

    for choice in 0..request.choices {
        let finish = Some(request.finish_reason);
        writer
            .send(shape.content_chunk(choice, "", finish, running_usage(sent_tokens)))
            .await?;
    }
    if request.usage.final_chunk {
        writer
            .send(shape.usage_chunk(Usage {
                prompt_tokens: request.prompt_tokens,
                completion_tokens: sent_tokens,
            }))
            .await?;
    }
    writer.send(done_event()).await?;
    Ok(Outcome::Ok)
}

/// vLLM (and Triton's frontend) report the failure in-band then end with `[DONE]`;
/// trtllm-serve just drops the connection.
async fn fail_midstream(flavour: Flavour, writer: &mut EventWriter) -> Result<Outcome, ClientGone> {
    match flavour {
        Flavour::Trtllm => {
            writer.abort_connection().await?;
            Ok(Outcome::Cut)
        }
        Flavour::Vllm | Flavour::TritonOpenai => {
            writer
                .send(midstream_error_event(MIDSTREAM_ERROR_MESSAGE))
                .await?;
            writer.send(done_event()).await?;
            Ok(Outcome::MidstreamError)
        }
    }
}
