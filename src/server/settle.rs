//! A short settle before Pingora's shutdown cleanup of the proxy service.
//!
//! When a listener stops accepting (SIGQUIT hand-over to a new process, or SIGTERM), Pingora's
//! accept loop ends and the app's `cleanup()` runs at once; `HttpProxy`'s cleanup wakes every
//! connection still waiting for its first request header and drops it. That includes a
//! connection accepted a moment earlier whose request is already on the wire: under load, about
//! one request in a few thousand was lost across an upgrade (`IncompleteMessage` on a fresh
//! connection). Waiting a little before that cleanup lets such a request arrive and be answered
//! (with `Connection: close`, since the process is shutting down); connections that stay idle
//! are still closed, only that much later.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

/// The longest settle; a short grace period shortens it (half of it), so shutdown stays bounded.
const MAX_SETTLE: Duration = Duration::from_secs(1);

/// Wraps a server app and delays its shutdown cleanup by `settle`.
pub struct SettlingApp<A> {
    inner: Arc<A>,
    settle: Duration,
}

impl<A> SettlingApp<A> {
    /// `grace_period_seconds`: the process's grace period (Pingora sleeps it before it stops the
    /// runtimes), so the settle always ends inside it.
    pub fn new(inner: A, grace_period_seconds: u64) -> SettlingApp<A> {
        SettlingApp {
            inner: Arc::new(inner),
            settle: settle_for(grace_period_seconds),
        }
    }
}

fn settle_for(grace_period_seconds: u64) -> Duration {
    (Duration::from_secs(grace_period_seconds) / 2).min(MAX_SETTLE)
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for SettlingApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.settle).await;
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settle_fits_inside_the_grace_period() {
        assert_eq!(settle_for(0), Duration::ZERO);
        assert_eq!(settle_for(1), Duration::from_millis(500));
        assert_eq!(settle_for(300), MAX_SETTLE);
    }
}
