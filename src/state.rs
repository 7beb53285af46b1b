//! Shared runtime state: the current configuration snapshot behind an `ArcSwap`, and reload.
//! Requests load one snapshot in `new_ctx` and keep it for their whole life, so in-flight
//! requests finish on the config they started with. Only this module writes the `ArcSwap`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::diff::{diff, ConfigDiff};
use crate::config::{self, Config, ConfigError};
use crate::metrics;

pub struct AppState {
    config: ArcSwap<Config>,
    config_path: PathBuf,
    generation: AtomicU64,
    admin_token: ArcSwap<Option<String>>,
    /// Serializes reloads (admin, signal) so two never interleave; never taken per request.
    reload_lock: Mutex<()>,
}

/// A successful reload.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub changes: ConfigDiff,
}

impl AppState {
    pub fn new(config: Config, config_path: &Path) -> Arc<AppState> {
        let token = read_admin_token(&config);
        metrics::CONFIG_GENERATION.set(1);
        Arc::new(AppState {
            config: ArcSwap::from_pointee(config),
            config_path: config_path.to_path_buf(),
            generation: AtomicU64::new(1),
            admin_token: ArcSwap::from_pointee(token),
            reload_lock: Mutex::new(()),
        })
    }

    /// The config every part of one request must use.
    pub fn snapshot(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn admin_token(&self) -> Arc<Option<String>> {
        self.admin_token.load_full()
    }

    /// Re-read and validate the config file; swap it in only if every check passes. On failure
    /// the running config stays and the generation is unchanged.
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, ConfigError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = config::load(&self.config_path);
        let fresh = match result {
            Ok(fresh) => fresh,
            Err(e) => {
                metrics::RELOADS
                    .with_label_values(&[trigger, "rejected"])
                    .inc();
                log::warn!(
                    "config reload ({trigger}) rejected, keeping generation {}: {e}",
                    self.generation()
                );
                return Err(e);
            }
        };
        let changes = diff(&self.config.load(), &fresh);
        self.admin_token.store(Arc::new(read_admin_token(&fresh)));
        self.config.store(Arc::new(fresh));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::RELOADS.with_label_values(&[trigger, "ok"]).inc();
        metrics::CONFIG_GENERATION.set(generation as i64);
        log::info!("config reloaded ({trigger}): generation {generation}");
        Ok(Reloaded {
            generation,
            changes,
        })
    }
}

/// `TOKENGATE_ADMIN_TOKEN` wins over `server.admin_token_file`. Empty means none.
fn read_admin_token(config: &Config) -> Option<String> {
    if let Ok(token) = std::env::var("TOKENGATE_ADMIN_TOKEN") {
        let token = token.trim().to_string();
        return (!token.is_empty()).then_some(token);
    }
    let path = config.server.admin_token_file.as_ref()?;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            (!token.is_empty()).then_some(token)
        }
        Err(e) => {
            log::error!(
                "admin token file {}: {e}; admin API disabled",
                path.display()
            );
            None
        }
    }
}
