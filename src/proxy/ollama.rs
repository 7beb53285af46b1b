//! Ollama's API on the proxy's phases: the request translated before routing, the local
//! answers (`/api/tags`, `/api/show`), and the reply translated piece by piece. The
//! translation itself is [`crate::ollama`]'s.

use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use pingora_core::Result;
use pingora_http::ResponseHeader;

use super::ctx::RequestCtx;
use crate::config::{Config, Route};
use crate::errors::ApiError;
use crate::fleet::Surface;
use crate::ollama::local::{self, ModelInfo};
use crate::ollama::response::Started;
use crate::ollama::{Api, Clock, JsonReply, NdjsonStream, Upstream};
use crate::routing::body::RequestBody;
use crate::routing::Endpoint;

/// An admitted Ollama call: which one, and the model as the client named it.
#[derive(Debug, Clone)]
pub struct OllamaCall {
    pub api: Api,
    pub model: String,
    /// The replica route the translated body goes to.
    pub upstream: Upstream,
}

impl OllamaCall {
    /// The surface the chosen cluster must serve for this call.
    pub fn surface(&self) -> Surface {
        match self.upstream {
            Upstream::ChatCompletions => Surface::Chat,
            Upstream::Completions => Surface::Completions,
        }
    }
}

/// The reply being translated.
#[derive(Debug)]
pub enum Translation {
    Stream(NdjsonStream),
    Json(JsonReply),
}

fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        wall: SystemTime::now(),
    }
}

/// The client's Ollama body → the OpenAI body every later step (scan, rules, limits, the
/// model rewrite) works on. Other endpoints' bodies pass unchanged.
pub fn translate_request(
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
    body: RequestBody,
) -> std::result::Result<RequestBody, ApiError> {
    let (api, translated) = match endpoint {
        Endpoint::OllamaChat => (Api::Chat, crate::ollama::translate_chat(body.as_slice())?),
        Endpoint::OllamaGenerate => (
            Api::Generate,
            crate::ollama::translate_generate(body.as_slice())?,
        ),
        _ => return Ok(body),
    };
    ctx.admission.ollama = Some(OllamaCall {
        api,
        model: translated.model,
        upstream: translated.upstream,
    });
    Ok(RequestBody::Whole(Bytes::from(translated.body)))
}

fn info<'a>(config: &'a Config, route: &'a Route) -> ModelInfo<'a> {
    ModelInfo {
        alias: &route.alias,
        owned_by: &route.owned_by,
        loaded_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(config.loaded_at_unix),
    }
}

/// `GET /api/tags`: the aliases `visible` admits.
pub fn tags(config: &Config, visible: impl Fn(&str) -> bool) -> Bytes {
    local::tags_json(
        config
            .routes_in_order()
            .filter(|r| visible(&r.alias))
            .map(|r| info(config, r)),
    )
}

/// `POST /api/show`: a model the key may not use is answered like one that does not exist.
pub fn show(
    config: &Config,
    visible: impl Fn(&str) -> bool,
    body: &[u8],
) -> std::result::Result<Bytes, ApiError> {
    let model = local::show_model(body)?;
    match config.route(&model).filter(|_| visible(&model)) {
        Some(route) => Ok(local::show_json(&info(config, route))),
        None => Err(ApiError::ModelNotFound { model }),
    }
}

/// A successful reply to an Ollama call starts translating; returns whether the body changes
/// (it always does: its length is not known up front).
pub fn start_reply(response: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<bool> {
    let Some(call) = ctx.admission.ollama.as_ref() else {
        return Ok(false);
    };
    let sse = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let started = Started {
        request: ctx.started,
        upstream: ctx.attempt.upstream_sent_at.unwrap_or(ctx.started),
    };
    let (translation, content_type) = if sse {
        let stream = NdjsonStream::new(call.api, &call.model, started);
        (Translation::Stream(stream), "application/x-ndjson")
    } else {
        let reply = JsonReply::new(call.api, &call.model, started, Instant::now());
        (Translation::Json(reply), "application/json; charset=utf-8")
    };
    ctx.reply.ollama = Some(translation);
    response.insert_header(http::header::CONTENT_TYPE, content_type)?;
    Ok(true)
}

/// One piece of the metered reply (with the meter's tail at the end) → what the client gets.
pub fn translate_body(ctx: &mut RequestCtx, body: &mut Option<Bytes>, end_of_stream: bool) {
    let Some(translation) = ctx.reply.ollama.as_mut() else {
        return;
    };
    let piece = body.take().unwrap_or_default();
    let now = clock();
    *body = Some(match translation {
        Translation::Stream(stream) => {
            let out = stream.feed(&piece, now);
            if end_of_stream {
                join(out, stream.finish(now))
            } else {
                out
            }
        }
        Translation::Json(reply) => {
            reply.feed(&piece);
            if end_of_stream {
                reply.finish(now)
            } else {
                Bytes::new()
            }
        }
    });
}

/// The reply broke off after it started: the meter's tail (if any), translated, and the
/// stream's error line.
pub fn translate_end(translation: &mut Translation, tail: Option<Bytes>) -> Bytes {
    let now = clock();
    let tail = tail.unwrap_or_default();
    match translation {
        Translation::Stream(stream) => join(stream.feed(&tail, now), stream.finish(now)),
        Translation::Json(reply) => {
            reply.feed(&tail);
            reply.finish(now)
        }
    }
}

fn join(a: Bytes, b: Bytes) -> Bytes {
    if a.is_empty() {
        return b;
    }
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    out.freeze()
}
