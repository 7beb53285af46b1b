//! tokengate: an LLM edge proxy on Cloudflare Pingora.
//!
//! Layers (dependencies point down only; `tests/check-layers.sh` checks it):
//! - leaves, plain Rust (std, serde, no Pingora): [`diagnostics`] (file problems),
//!   [`estimate`] (the bytes-per-token estimate), [`client_request_id`] (a client's own id,
//!   bounded), [`usage_totals`] (admin usage totals),
//!   [`upstream_error`], [`metering`], [`ratelimit`], [`rules`], [`fleet`] (replica health and
//!   selection), [`auth`] (keys; uses `ratelimit`, `diagnostics`), [`ollama`] (Ollama's API
//!   to and from OpenAI's; uses `metering`'s SSE parser)
//! - the validated model: [`config`] (file format → model; its TLS check is the one Pingora
//!   use), [`routing`] (endpoints, aliases, body scan and rewrite), [`errors`] (the one
//!   client-facing error)
//! - shared runtime state: [`state`], [`metrics`], [`accesslog`], [`recent`] (the
//!   recent-requests ring), [`events`] (the live event stream's hub and summary)
//! - adapters (the only modules that see Pingora): [`proxy`] (the only one that sees a
//!   `Session`), [`admin`], [`services`] (background services, including fleet mode's
//!   Redis service), [`distributed`] (fleet mode: the Redis adapter), [`server`]
//! - wiring: [`cli`], [`demo`]; the replica simulator [`sim`] is a test and demo tool.

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod client_request_id;
pub mod config;
pub mod demo;
pub mod diagnostics;
pub mod distributed;
pub mod errors;
pub mod estimate;
pub mod events;
pub mod fleet;
pub mod metering;
pub mod metrics;
pub mod ollama;
pub mod proxy;
pub mod ratelimit;
pub mod recent;
pub mod routing;
pub mod rules;
pub mod server;
pub mod services;
pub mod sim;
pub mod state;
pub mod upstream_error;
pub mod usage_totals;
