//! Shared runtime state: the current configuration snapshot behind an `ArcSwap`.
//! Requests load one snapshot in `new_ctx` and keep it for their whole life.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, Config, ConfigError};

pub struct AppState {
    config: ArcSwap<Config>,
    config_path: PathBuf,
    generation: AtomicU64,
}

impl AppState {
    pub fn new(config: Config, config_path: &Path) -> Arc<AppState> {
        Arc::new(AppState {
            config: ArcSwap::from_pointee(config),
            config_path: config_path.to_path_buf(),
            generation: AtomicU64::new(1),
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

    /// Re-read and validate the config file; swap it in only if it is valid.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        let fresh = config::load(&self.config_path)?;
        self.config.store(Arc::new(fresh));
        Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
    }
}
