//! Shared runtime state: the current snapshot (validated config plus each cluster's replica
//! states and balancer) behind an `ArcSwap`, and reload. Requests load one snapshot in
//! `new_ctx` and keep it for their whole life, so in-flight requests finish on the config
//! they started with. Only this module writes the `ArcSwap`. Replica health, in-flight counts
//! and bucket consumption live outside the snapshot, keyed by stable names, so they survive
//! reloads.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::auth::KeyRegistry;
use crate::config::diff::{diff, ConfigDiff};
use crate::config::{self, Config, ConfigError};
use crate::fleet::{Balancer, Fleet, HealthRules, ReplicaId, ReplicaState};
use crate::metrics;
use crate::ratelimit::Limiter;
use crate::usage_totals::Usage;

pub mod queues;

/// One cluster's replicas (in config order) with their shared states, and its selector.
pub struct ClusterRuntime {
    pub replicas: Vec<Arc<ReplicaState>>,
    pub balancer: Balancer,
    /// The admission queue, when the cluster has `queue = { .. }`.
    pub queue: Option<Arc<queues::ClusterQueue>>,
    /// The cluster's metric series (`metrics::handles`).
    pub metrics: metrics::handles::ClusterMetrics,
}

/// Everything a request reads, immutable.
pub struct Snapshot {
    pub config: Config,
    pub clusters: HashMap<String, ClusterRuntime>,
    /// Each model alias's metric series on its cluster, by alias.
    pub route_metrics: HashMap<String, metrics::handles::RouteMetrics>,
    pub generation: u64,
}

impl Deref for Snapshot {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Snapshot {
    pub fn runtime(&self, cluster: &str) -> Option<&ClusterRuntime> {
        self.clusters.get(cluster)
    }

    /// The series of `model` on `cluster`, unless a rule sent the model elsewhere.
    pub fn route_metrics(
        &self,
        model: &str,
        cluster: &str,
    ) -> Option<&metrics::handles::RouteMetrics> {
        self.route_metrics
            .get(model)
            .filter(|m| m.is_for(model, cluster))
    }
}

pub struct AppState {
    snapshot: ArcSwap<Snapshot>,
    config_path: PathBuf,
    generation: AtomicU64,
    admin_token: ArcSwap<Option<String>>,
    pub fleet: Fleet,
    /// Admission queues by cluster name: survive reloads.
    pub queues: queues::AdmissionQueues,
    /// API keys (`None`: auth off). Outside the snapshot: admin changes apply at once.
    keys: ArcSwap<Option<Arc<KeyRegistry>>>,
    /// Bucket consumption and concurrency, keyed by key name / alias: survives reloads.
    pub limiter: Limiter,
    /// Request-body bytes held in memory by all requests (limits in the snapshot's config).
    pub body_budget: Arc<crate::ratelimit::body_budget::BodyBudget>,
    /// Responses API id → the replica that stored it (sized by `server.stored_responses`).
    pub stored_responses: crate::fleet::stored::ResponseAffinity,
    /// Tokens and requests per key and model since start (`GET /admin/usage`).
    pub usage: Usage,
    /// The last finished requests (`GET /admin/requests`); sized by `server.recent_requests`.
    pub recent: crate::recent::RecentRequests,
    /// The live event stream (`GET /admin/events`).
    pub events: crate::events::EventHub,
    /// Set once every replica was probed once after start (readiness).
    pub probed_once: std::sync::atomic::AtomicBool,
    /// Serializes reloads (admin, signal) so two never interleave; never taken per request.
    reload_lock: Mutex<()>,
    /// Called after every successful swap (e.g. to retarget health probes).
    on_swap: Mutex<Vec<SwapHook>>,
    /// Serializes admin writes to the config and overlay files (read, change, validate,
    /// write, reload) so two concurrent changes never lose one another.
    pub config_writes: Mutex<()>,
}

/// Runs after every snapshot swap.
pub type SwapHook = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// A successful reload.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub changes: ConfigDiff,
    /// Said when part of the new config cannot apply until an upgrade (`changes.needs_upgrade`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn build_snapshot(
    config: Config,
    fleet: &Fleet,
    queues: &queues::AdmissionQueues,
    generation: u64,
) -> Snapshot {
    let mut clusters = HashMap::new();
    let mut live = HashSet::new();
    for cluster in &config.clusters {
        let rules = HealthRules::new(&cluster.health, &cluster.passive);
        let replicas = cluster
            .replicas
            .iter()
            .map(|r| {
                live.insert(ReplicaId::new(&cluster.name, r.addr));
                fleet.get_or_insert(&cluster.name, r.addr, &rules)
            })
            .collect();
        clusters.insert(
            cluster.name.clone(),
            ClusterRuntime {
                replicas,
                balancer: Balancer::new(cluster.balance.clone()),
                queue: cluster
                    .balance
                    .queue
                    .map(|q| queues.get_or_insert(&cluster.name, q.max_depth)),
                metrics: metrics::handles::ClusterMetrics::new(&cluster.name),
            },
        );
    }
    let route_metrics = config
        .routes
        .iter()
        .map(|(alias, route)| {
            let series = metrics::handles::RouteMetrics::new(alias, &route.cluster.name);
            (alias.clone(), series)
        })
        .collect();
    // Removed replicas leave the registry: no new request can pick them, in-flight ones hold
    // their state until they finish (drain).
    fleet.retain(&live);
    Snapshot {
        config,
        clusters,
        route_metrics,
        generation,
    }
}

/// Load the keys file a config names (or none). A reload of the same file re-reads it in place
/// so admin writes and the registry stay one object.
fn load_keys(
    config: &Config,
    current: Option<&Arc<KeyRegistry>>,
) -> Result<Option<Arc<KeyRegistry>>, ConfigError> {
    let Some(auth) = config.auth.as_ref() else {
        return Ok(None);
    };
    let as_config_error = |e: crate::auth::KeysFileError| ConfigError {
        issues: vec![config::ConfigIssue {
            file: auth.keys_file.clone(),
            line: None,
            column: None,
            field: "auth.keys_file".into(),
            message: e.to_string(),
        }],
    };
    match current {
        Some(registry) if registry.path() == auth.keys_file => {
            registry.reload().map_err(as_config_error)?;
            Ok(Some(registry.clone()))
        }
        _ => KeyRegistry::load(&auth.keys_file)
            .map(|r| Some(Arc::new(r)))
            .map_err(as_config_error),
    }
}

impl AppState {
    /// Fails when the keys file the config names cannot be loaded.
    pub fn new(config: Config, config_path: &Path) -> Result<Arc<AppState>, ConfigError> {
        let token = read_admin_token(&config);
        let keys = load_keys(&config, None)?;
        metrics::CONFIG_GENERATION.set(1);
        let fleet = Fleet::new();
        let limiter = limiter_for(&config);
        let recent = crate::recent::RecentRequests::new(config.server.recent_requests);
        let queues = queues::AdmissionQueues::default();
        let snapshot = build_snapshot(config, &fleet, &queues, 1);
        Ok(Arc::new(AppState {
            snapshot: ArcSwap::from_pointee(snapshot),
            config_path: config_path.to_path_buf(),
            generation: AtomicU64::new(1),
            admin_token: ArcSwap::from_pointee(token),
            fleet,
            queues,
            keys: ArcSwap::from_pointee(keys),
            limiter,
            body_budget: Arc::default(),
            stored_responses: Default::default(),
            usage: Usage::new(),
            recent,
            events: crate::events::EventHub::default(),
            probed_once: std::sync::atomic::AtomicBool::new(false),
            reload_lock: Mutex::new(()),
            on_swap: Mutex::new(Vec::new()),
            config_writes: Mutex::new(()),
        }))
    }

    /// The key registry, when auth is on.
    pub fn keys(&self) -> Option<Arc<KeyRegistry>> {
        self.keys.load().as_ref().clone()
    }

    /// What every part of one request must use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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

    /// Run `hook` now and after every successful reload.
    pub fn on_swap(&self, hook: SwapHook) {
        hook(&self.snapshot.load());
        if let Ok(mut hooks) = self.on_swap.lock() {
            hooks.push(hook);
        }
    }

    /// Re-read and validate the config file; swap it in only if every check passes. On failure
    /// the running config stays and the generation is unchanged.
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, ConfigError> {
        let result = self.reload_file(trigger);
        let event = match &result {
            Ok(r) => serde_json::json!({ "trigger": trigger, "result": "ok", "reloaded": r }),
            Err(e) => serde_json::json!({
                "trigger": trigger,
                "result": "rejected",
                "generation": self.generation(),
                "errors": e.issues.iter().map(|i| serde_json::json!({
                    "field": i.field, "line": i.line, "message": i.message,
                })).collect::<Vec<_>>(),
            }),
        };
        self.events.publish("reload", &event);
        result
    }

    fn reload_file(&self, trigger: &str) -> Result<Reloaded, ConfigError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match config::load(&self.config_path) {
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
        let keys = match load_keys(&fresh, self.keys().as_ref()) {
            Ok(keys) => keys,
            Err(e) => {
                metrics::RELOADS
                    .with_label_values(&[trigger, "rejected"])
                    .inc();
                log::warn!("config reload ({trigger}) rejected: {e}");
                return Err(e);
            }
        };
        let changes = diff(&self.snapshot.load().config, &fresh);
        self.keys.store(Arc::new(keys));
        let generation = self.generation() + 1;
        self.admin_token.store(Arc::new(read_admin_token(&fresh)));
        self.recent.set_capacity(fresh.server.recent_requests);
        let snapshot = build_snapshot(fresh, &self.fleet, &self.queues, generation);
        self.snapshot.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::Relaxed);
        if let Ok(hooks) = self.on_swap.lock() {
            let current = self.snapshot.load();
            for hook in hooks.iter() {
                hook(&current);
            }
        }
        metrics::RELOADS.with_label_values(&[trigger, "ok"]).inc();
        metrics::CONFIG_GENERATION.set(generation as i64);
        log::info!("config reloaded ({trigger}): generation {generation}");
        let warning = (!changes.needs_upgrade.is_empty()).then(|| {
            let message = format!(
                "{} changed: the running listeners stay as they are; the new ones take effect only after a zero-downtime upgrade (a new process started with --upgrade; systemd: tokengate-upgrade) or a restart",
                changes.needs_upgrade.join(", ")
            );
            log::warn!("config reload ({trigger}): {message}");
            message
        });
        Ok(Reloaded {
            generation,
            changes,
            warning,
        })
    }
}

/// Fleet mode leases every bucket from Redis; a single node keeps local buckets. Chosen once
/// at start: changing `[fleet]` needs a restart.
fn limiter_for(config: &Config) -> Limiter {
    match &config.fleet {
        Some(f) => Limiter::leased(crate::ratelimit::lease::LeaseShared::new(
            crate::ratelimit::lease::LeaseParams {
                sync_interval: f.sync_interval,
                max_fraction: f.lease_fraction,
                idle_return: f.idle_return,
                down_mode: f.on_redis_down,
            },
        )),
        None => Limiter::new(),
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
