//! Pingora background services: the adapters that run beside the proxy, not per request.
//!
//! - [`health`]: active health probes and metrics scrapes of every replica.
//! - [`events`]: the live event stream's once-a-second health changes and summary.
//! - [`reload_signal`]: SIGHUP → config reload.
//! - [`fleet`]: fleet mode's Redis tasks (leases, key sync, heartbeat, usage, fleet reloads).

pub mod events;
pub mod fleet;
pub mod health;
pub mod reload_signal;
