//! The once-a-second publisher of the live event stream (`GET /admin/events`): replica health
//! changes since the last tick and the summary (rates from the metrics counters, in-flight and
//! queues from the replica views). Reload results are published by the reload itself. When no
//! stream is open a tick only remembers the replicas' states.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::events::summary::{summarize, Counters, HealthWatch};
use crate::state::AppState;

/// How often the summary is sent.
pub const TICK: Duration = Duration::from_secs(1);

pub struct EventTicker {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for EventTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health = HealthWatch::default();
        let mut before: Option<(Instant, Counters)> = None;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let views = self.state.fleet.snapshot(now);
            let events = &self.state.events;
            for change in health.changes(&views) {
                events.publish("health", &change);
            }
            if events.subscribers() == 0 {
                before = None;
                continue;
            }
            let counters = crate::metrics::event_counters();
            if let Some((at, old)) = &before {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                let summary = summarize(old, &counters, secs, views);
                events.publish("summary", &summary);
            }
            before = Some((now, counters));
        }
    }
}
