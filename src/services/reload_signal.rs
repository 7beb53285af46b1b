//! `SIGHUP` reloads the configuration (the systemd unit's `ExecReload`). Same path and
//! validation as `POST /admin/reload`: a bad file is logged and counted, the running config
//! stays.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::state::AppState;

pub struct SighupReload {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}; reload with POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    // A failed reload is logged and counted inside `reload`.
                    let _ = self.state.reload("signal");
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
