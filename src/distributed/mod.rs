//! Fleet mode (`[fleet]`): several tokengate instances sharing API keys, rate limits and
//! usage through Redis. Not to be confused with `crate::fleet`, the GPU replicas. Free of
//! Pingora: the background service that runs these tasks is `services::fleet`.
//!
//! The hot path never talks to Redis: it reads the in-memory key registry and spends local
//! leases (`ratelimit::lease`). Background tasks here keep both in step with Redis: the lease
//! exchange, the key sync (pub/sub plus a version check), the heartbeat and the usage push.
//! When Redis is unreachable every task degrades on its own and retries; nothing here ever
//! stops a request.

pub mod fleet_view;
pub mod import;
pub mod keys;
pub mod leases;
pub mod metrics;
pub mod scripts;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

pub use transport::Conn;
use transport::Transport;

use crate::config::FleetSettings;
use crate::ratelimit::lease::LeaseShared;
use crate::ratelimit::Scope;

/// Every Redis key and channel name, from the configured prefix. Keys a script touches
/// together share a `{…}` hash tag (one Redis Cluster slot).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// One bucket: e.g. `tg:rl:{tg:k:acme}:requests_per_minute`.
    pub fn bucket(&self, scope: Scope, name: &str, field: &str) -> String {
        let p = &self.prefix;
        match scope {
            Scope::Key => format!("{p}:rl:{{{p}:k:{name}}}:{field}"),
            Scope::Model => format!("{p}:rl:{{{p}:m:{name}}}:{field}"),
            Scope::Global => format!("{p}:rl:{{{p}:g}}:{field}"),
        }
    }

    pub fn keys_hash(&self) -> String {
        format!("{}:{{{}:keys}}:all", self.prefix, self.prefix)
    }

    pub fn keys_version(&self) -> String {
        format!("{}:{{{}:keys}}:version", self.prefix, self.prefix)
    }

    pub fn keys_channel(&self) -> String {
        format!("{}:keys:changed", self.prefix)
    }

    pub fn reload_channel(&self) -> String {
        format!("{}:reload", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}:{{{}:fleet}}:instances", self.prefix, self.prefix)
    }

    pub fn instance_info(&self, id: &str) -> String {
        format!("{}:{{{}:fleet}}:inst:{id}", self.prefix, self.prefix)
    }

    pub fn reload_results(&self, request: &str) -> String {
        format!("{}:{{{}:fleet}}:reload:{request}", self.prefix, self.prefix)
    }

    pub fn usage(&self) -> String {
        format!("{}:{{{}:usage}}:totals", self.prefix, self.prefix)
    }
}

/// Why a fleet operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("Redis is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// The connection to the fleet's Redis and what every task shares.
pub struct FleetLink {
    pub settings: FleetSettings,
    pub names: Names,
    transport: Transport,
    /// Set once the background service has started (the connection lives on its runtime).
    conn: OnceLock<Conn>,
    up: AtomicBool,
    pub lease: Arc<LeaseShared>,
}

impl FleetLink {
    /// Fails only on a malformed URL or an unreadable password or CA file; never connects.
    pub fn new(settings: &FleetSettings, lease: Arc<LeaseShared>) -> Result<FleetLink, String> {
        Ok(FleetLink {
            names: Names::new(&settings.key_prefix),
            settings: settings.clone(),
            transport: Transport::new(settings)?,
            conn: OnceLock::new(),
            up: AtomicBool::new(false),
            lease,
        })
    }

    /// At start: refuses a TLS certificate that is not trusted (see `transport::probe_tls`).
    pub fn probe_tls(&self) -> Result<(), String> {
        transport::probe_tls(&self.transport, &self.settings)
    }

    /// Creates the connection on the calling (background service) runtime.
    pub fn start_connection(&self) -> Result<(), FleetError> {
        let conn = self.transport.connect_lazy(self.settings.redis_timeout)?;
        let _ = self.conn.set(conn);
        Ok(())
    }

    /// A handle to the multiplexed connection (cheap clone), once started.
    pub fn conn(&self) -> Result<Conn, FleetError> {
        self.conn
            .get()
            .cloned()
            .ok_or_else(|| FleetError::Unreachable("the fleet service has not started".into()))
    }

    /// The node to subscribe through on the `attempt`-th try (cluster seeds in turn).
    pub fn subscriber(&self, attempt: usize) -> Option<&redis::Client> {
        self.transport.subscriber(attempt)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records Redis's state; returns whether it changed.
    pub fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            metrics::REDIS_UP.set(i64::from(up));
            self.lease.set_store_down(!up);
            if up {
                log::info!("fleet: Redis reachable again; leasing resumes");
            } else {
                metrics::FALLBACKS.inc();
                log::warn!(
                    "fleet: Redis unreachable; limits fall back to this instance's share ({:?}) of {} instance(s)",
                    self.settings.on_redis_down,
                    self.lease.instances()
                );
            }
        }
        was != up
    }

    /// Runs `fut` with the command timeout (the manager has its own; this bounds reconnects).
    pub async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(self.settings.redis_timeout * 4, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(FleetError::Unreachable("timed out".into())),
        }
    }
}
