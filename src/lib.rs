//! tokengate: an LLM edge proxy on Cloudflare Pingora.
//!
//! Layers (dependencies point down only):
//! - pure logic: [`errors`], [`config`], [`routing`], [`balance`], [`upstream_error`]
//! - shared runtime state: [`state`], [`metrics`]
//! - adapters: [`proxy`] (the only module that sees a Pingora `Session`), [`admin`]
//! - wiring: [`server`], [`demo`]; the replica simulator [`sim`] is a test and demo tool.

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod config;
pub mod demo;
pub mod errors;
pub mod metering;
pub mod metrics;
pub mod proxy;
pub mod reload_signal;
pub mod routing;
pub mod server;
pub mod sim;
pub mod state;
pub mod upstream_error;
