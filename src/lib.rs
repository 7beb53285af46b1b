//! tokengate: an LLM edge proxy on Cloudflare Pingora.
//!
//! Layers (dependencies point down only):
//! - pure logic: [`errors`], [`config`], [`routing`], [`metering`], [`upstream_error`],
//!   [`fleet`] (replica health and selection)
//! - shared runtime state: [`state`], [`metrics`]
//! - adapters: [`proxy`] (the only module that sees a Pingora `Session`), [`admin`],
//!   [`distributed`] (fleet mode: the Redis adapter and its background service)
//! - wiring: [`server`], [`demo`]; the replica simulator [`sim`] is a test and demo tool.

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod distributed;
pub mod errors;
pub mod fleet;
pub mod health_service;
pub mod metering;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload_signal;
pub mod routing;
pub mod rules;
pub mod server;
pub mod sim;
pub mod state;
pub mod upstream_error;
