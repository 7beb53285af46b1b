//! The validated runtime model. Built once per load from `file::ConfigFile`; the request path
//! only ever reads these types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::fleet::Flavour;
use crate::fleet::{BalanceSettings, HealthSettings, PassiveSettings, ScrapeSettings};
use crate::ratelimit::{GlobalLimits, ModelLimits};

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    /// TLS client listeners; empty: no TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// Set whenever `tls_listen` is non-empty (validated: readable, parsable, matching).
    pub tls: Option<TlsFiles>,
    /// HTTP/2 cleartext (prior knowledge) on the plain listeners, beside HTTP/1.1.
    pub h2c: bool,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    /// Pingora's `work_stealing` (one runtime shared by the worker threads).
    pub work_stealing: bool,
    pub max_request_body_bytes: u64,
    /// Request-body bytes in memory: all requests, and one key's.
    pub body_budget: crate::ratelimit::body_budget::BudgetLimits,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub client_body_timeout: Duration,
    pub client_header_timeout: Duration,
    /// Read buffer per client connection under Pingora's parser (0: none).
    pub client_read_buffer_bytes: usize,
    /// Caps on concurrent client connections.
    pub connections: crate::ratelimit::connections::ConnectionLimits,
    pub upstream_idle_timeout: Duration,
    pub connect_retries: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub client_keepalive_seconds: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub admin_token_file: Option<std::path::PathBuf>,
    pub access_log: AccessLogTarget,
    /// Size of the recent-requests ring (`GET /admin/requests`).
    pub recent_requests: usize,
    /// Responses API ids kept for follow-up routing (`server.stored_responses`).
    pub stored_responses: usize,
}

/// Certificate and key of the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// ALPN `h2` + `http/1.1` (else HTTP/1.1 only).
    pub http2: bool,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub addr: SocketAddr,
    /// As written in the config; used for the upstream `Host` header.
    pub authority: String,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub flavour: Flavour,
    pub replicas: Vec<Replica>,
    pub health: HealthSettings,
    pub passive: PassiveSettings,
    pub scrape: ScrapeSettings,
    pub balance: BalanceSettings,
    /// Header carrying the `prefix-affinity` key; `None`: hash the prompt's leading part.
    pub affinity_header: Option<http::HeaderName>,
    pub timeouts: ClusterTimeouts,
    /// The API surfaces its replicas serve (`serves`, default from the flavour).
    pub serves: crate::fleet::Surfaces,
}

/// Upstream timeouts of one cluster (server defaults unless overridden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub total: Option<Duration>,
}

/// What a public model alias resolves to.
#[derive(Debug, Clone)]
pub struct Route {
    pub alias: String,
    pub cluster: Arc<Cluster>,
    pub served_name: String,
    /// Responses keep the served name in `model` (else it is rewritten back to the alias).
    pub expose_served_name: bool,
    /// Every served name of the aliases on this cluster: vLLM serving several names answers
    /// each with its first, so a response may name any of them.
    pub cluster_names: Arc<[String]>,
    pub owned_by: String,
    pub limits: ModelLimits,
}

/// Fill each route's `cluster_names` (after every route is built).
pub(super) fn share_cluster_names(routes: &mut HashMap<String, Arc<Route>>) {
    let mut by_cluster: HashMap<String, Vec<String>> = HashMap::new();
    let mut all: Vec<&Arc<Route>> = routes.values().collect();
    all.sort_by(|a, b| a.alias.cmp(&b.alias));
    for r in all {
        let names = by_cluster.entry(r.cluster.name.clone()).or_default();
        if !names.contains(&r.served_name) {
            names.push(r.served_name.clone());
        }
    }
    let shared: HashMap<String, Arc<[String]>> = by_cluster
        .into_iter()
        .map(|(cluster, names)| (cluster, Arc::from(names)))
        .collect();
    for route in routes.values_mut() {
        if let Some(names) = shared.get(&route.cluster.name) {
            Arc::make_mut(route).cluster_names = names.clone();
        }
    }
}

/// API keys and admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub keys_file: std::path::PathBuf,
    pub default_completion_reservation: u64,
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub clusters: Vec<Arc<Cluster>>,
    /// Alias → route. Aliases are listed in config order by `model_order`.
    pub routes: HashMap<String, Arc<Route>>,
    pub model_order: Vec<String>,
    /// `None`: no key needed.
    pub auth: Option<AuthSettings>,
    pub global_limits: GlobalLimits,
    /// `[rate_limit_classes]` by name.
    pub rate_limit_classes: std::collections::HashMap<String, RateLimitClass>,
    /// Compiled request rules, evaluated in order per request.
    pub rules: Arc<crate::rules::RuleSet>,
    /// Unix seconds when this config was loaded (the `created` of `/v1/models`).
    pub loaded_at_unix: u64,
    /// `None`: a single node (the default); no Redis.
    pub fleet: Option<super::fleet::FleetSettings>,
    /// Which clusters and aliases came from the config file, which from the runtime overlay.
    pub origins: super::overlay::Origins,
}

impl Config {
    pub fn route(&self, alias: &str) -> Option<&Arc<Route>> {
        self.routes.get(alias)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Routes in config order.
    pub fn routes_in_order(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.model_order.iter().filter_map(|a| self.routes.get(a))
    }
}

/// A rate-limit class: a request a rule puts in it counts against `per_key` (under the name
/// `<key>@<class>`) and `class` (under `@<class>`) instead of its key's own limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitClass {
    pub per_key: crate::ratelimit::KeyLimits,
    pub class: crate::ratelimit::KeyLimits,
}
