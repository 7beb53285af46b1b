//! The fleet background service: one Pingora background service running the lease exchange,
//! the key sync (pub/sub and version check), the heartbeat and the usage push, each in its
//! own loop so a slow one never delays another. The proxy starts accepting only after the
//! first key sync was tried (so a restarted instance serves every key at once).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use serde_json::json;
use tokio::sync::Notify;

use crate::distributed::{fleet_view, keys, leases, metrics, FleetLink};
use crate::state::AppState;
use crate::usage_totals::UsageSnapshot;

pub struct FleetService {
    pub link: Arc<FleetLink>,
    pub state: Arc<AppState>,
    key_changed: Notify,
}

impl FleetService {
    pub fn new(link: Arc<FleetLink>, state: Arc<AppState>) -> FleetService {
        FleetService {
            link,
            state,
            key_changed: Notify::new(),
        }
    }

    async fn lease_loop(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.link.settings.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => leases::sync_once(&self.link, &self.state.limiter).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "id": self.link.settings.instance_id,
            "generation": self.state.generation(),
            "redis": if self.link.is_up() { "up" } else { "down" },
            "keys": self.state.keys().map_or(0, |k| k.len()),
            "pid": std::process::id(),
            "beat_unix_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
    }

    async fn heartbeat_loop(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.link.settings.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = fleet_view::heartbeat(&self.link, &self.info()).await {
                        log::debug!("fleet: heartbeat failed: {e}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn usage_loop(&self, mut shutdown: ShutdownWatch) {
        let mut pushed = UsageSnapshot::default();
        let mut tick = tokio::time::interval(self.link.settings.usage_push);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.state.usage.snapshot();
                    let deltas = fleet_view::usage_deltas(&now, &pushed);
                    // On failure the deltas stay pending and go with the next push.
                    if fleet_view::push_usage(&self.link, &deltas).await.is_ok() {
                        pushed = now;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One key refresh; `applied` is the version in memory (None: load unconditionally).
    async fn refresh_keys(&self, applied: &mut Option<u64>, last: &mut usize, trigger: &str) {
        let Some(registry) = self.state.keys() else {
            return;
        };
        // A reload may have replaced the registry object (another keys file): load anew.
        let ptr = Arc::as_ptr(&registry) as usize;
        let known = if ptr == *last { *applied } else { None };
        match keys::refresh(&self.link, &registry, &self.state.limiter, known, trigger).await {
            Ok(v) => {
                *applied = Some(v);
                *last = ptr;
            }
            Err(e) => log::debug!("fleet: key sync failed: {e}"),
        }
    }

    async fn key_loop(
        &self,
        mut shutdown: ShutdownWatch,
        mut applied: Option<u64>,
        mut last: usize,
    ) {
        let mut tick = tokio::time::interval(self.link.settings.key_check);
        let mut was_up = self.link.is_up();
        loop {
            let trigger = tokio::select! {
                _ = tick.tick() => "version_check",
                _ = self.key_changed.notified() => "notify",
                _ = shutdown.changed() => return,
            };
            let up = self.link.is_up();
            if up && !was_up {
                applied = None; // re-sync everything after an outage
                self.refresh_keys(&mut applied, &mut last, "reconnect")
                    .await;
            } else {
                self.refresh_keys(&mut applied, &mut last, trigger).await;
            }
            was_up = up;
        }
    }

    async fn on_reload_request(&self, request: &str) {
        let result = match self.state.reload("fleet") {
            Ok(r) => json!({ "ok": true, "generation": r.generation }),
            Err(e) => {
                json!({ "ok": false, "generation": self.state.generation(), "error": e.to_string() })
            }
        };
        if let Err(e) = fleet_view::answer_reload(&self.link, request, &result).await {
            log::warn!("fleet: could not record the reload result: {e}");
        }
    }

    /// Pub/sub: key changes wake the key loop; reload requests reload this instance. A lost
    /// subscription is re-made; the version check covers whatever was missed meanwhile.
    async fn subscriber_loop(&self, mut shutdown: ShutdownWatch) {
        for attempt in 0.. {
            let Some(client) = self.link.subscriber(attempt) else {
                return;
            };
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    let keys = self.link.names.keys_channel();
                    let reload = self.link.names.reload_channel();
                    if pubsub.subscribe(&[&keys, &reload]).await.is_ok() {
                        self.key_changed.notify_one();
                        let mut stream = pubsub.on_message();
                        loop {
                            tokio::select! {
                                msg = stream.next() => match msg {
                                    Some(m) if m.get_channel_name() == reload => {
                                        let request: String = m.get_payload().unwrap_or_default();
                                        self.on_reload_request(&request).await;
                                    }
                                    Some(_) => self.key_changed.notify_one(),
                                    None => break,
                                },
                                _ = shutdown.changed() => return,
                            }
                        }
                    }
                }
                Err(e) => log::debug!("fleet: subscribe failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        metrics::force();
        metrics::REDIS_UP.set(0);
        if let Err(e) = self.link.start_connection() {
            log::error!("fleet: cannot set up the Redis connection: {e}");
        }
        // Redis down at start: serve on the local share with the keys file's keys.
        let up = leases::ping(&self.link).await.is_ok();
        if !self.link.set_up(up) && !up {
            self.link.lease.set_store_down(true);
            metrics::FALLBACKS.inc();
            log::warn!("fleet: Redis unreachable at start; serving on the local share");
        }
        let _ = fleet_view::heartbeat(&self.link, &self.info()).await;
        let (mut applied, mut last) = (None, 0);
        if up {
            self.refresh_keys(&mut applied, &mut last, "start").await;
        }
        ready_notifier.notify_ready();
        tokio::join!(
            self.lease_loop(shutdown.clone()),
            self.heartbeat_loop(shutdown.clone()),
            self.usage_loop(shutdown.clone()),
            self.key_loop(shutdown.clone(), applied, last),
            self.subscriber_loop(shutdown),
        );
    }
}
