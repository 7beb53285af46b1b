//! Pingora background services: the adapters that run beside the proxy, not per request.
//!
//! - [`health`]: active health probes and metrics scrapes of every replica.
//! - [`reload_signal`]: SIGHUP → config reload.

pub mod health;
pub mod reload_signal;
