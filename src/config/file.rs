//! The configuration file format, exactly as a human writes it. `deny_unknown_fields`
//! everywhere so a typo is an error, not a silently ignored setting. Validation into the
//! runtime model lives in `model.rs`.

use serde::Deserialize;
use toml::Spanned;

use crate::ratelimit::{GlobalLimits, ModelLimits};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: ServerSection,
    /// API keys; without this section the gateway is open (no key needed).
    #[serde(default)]
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub limits: Option<LimitsSection>,
    /// `[rate_limit_classes.<name>]`: limits a rule's `rate_limit_class` puts a request under.
    #[serde(default)]
    pub rate_limit_classes: std::collections::BTreeMap<String, Spanned<RateLimitClassSection>>,
    /// Rule files (lua-free-rules): files, directories or `dir/*.toml`, relative to this file.
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    #[serde(default)]
    pub clusters: Vec<ClusterSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    /// Several instances sharing keys, limits and usage through Redis (`config/fleet.rs`).
    #[serde(default)]
    pub fleet: Option<super::fleet::FleetSection>,
}

/// One rate-limit class: the key limit fields, per key within the class, plus optional
/// limits for the whole class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitClassSection {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Shared by every key's requests in the class.
    #[serde(default)]
    pub global: Option<GlobalLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Client-facing plain-HTTP listen addresses (`ip:port`); may be empty when `tls_listen`
    /// is set.
    pub listen: Vec<Spanned<String>>,
    /// Client-facing TLS listen addresses (`ip:port`), terminated with `tls_cert` / `tls_key`.
    #[serde(default)]
    pub tls_listen: Vec<Spanned<String>>,
    /// PEM certificate chain (leaf first) for `tls_listen`; relative to this file.
    #[serde(default)]
    pub tls_cert: Option<Spanned<String>>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`; relative to this file.
    #[serde(default)]
    pub tls_key: Option<Spanned<String>>,
    /// Offer HTTP/2 by ALPN on `tls_listen` (HTTP/1.1 stays available).
    #[serde(default = "default_tls_http2")]
    pub tls_http2: bool,
    /// Speak HTTP/2 cleartext (prior knowledge, `PRI *` preface) on `listen` too; HTTP/1.1
    /// stays available on the same listener.
    #[serde(default = "default_h2c")]
    pub h2c: bool,
    /// Admin listener (`/metrics`, `/admin/*`); loopback by default.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: Spanned<String>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: Spanned<usize>,
    /// Pingora's work stealing between the worker threads (one shared runtime); `false`
    /// gives each thread its own runtime.
    #[serde(default = "default_work_stealing")]
    pub work_stealing: bool,
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: Spanned<u64>,
    /// Request-body bytes all requests together may hold in memory; default a quarter of the
    /// memory available (cgroup limit or RAM). Over it: 503 with `Retry-After`.
    #[serde(default)]
    pub max_buffered_body_bytes: Option<Spanned<u64>>,
    /// The share of that budget one API key's requests may hold; default a quarter of it, at
    /// least `max_request_body_bytes`.
    #[serde(default)]
    pub max_buffered_body_bytes_per_key: Option<Spanned<u64>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: Spanned<u64>,
    /// Bounds the wait for the response header (time to first token) and each later read.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: Spanned<u64>,
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: Spanned<u64>,
    /// How long to wait for a slow client to send its request body.
    #[serde(default = "default_client_body_timeout_ms")]
    pub client_body_timeout_ms: Spanned<u64>,
    /// A request header must arrive whole within this (from the connection's start, or from
    /// the first byte of a later request on a kept-alive connection); else `408`.
    #[serde(default = "default_client_header_timeout_ms")]
    pub client_header_timeout_ms: Spanned<u64>,
    /// Read buffer of each client connection below Pingora's HTTP parser (Pingora's own
    /// default is 65536). 0, the default: none; reads go straight into the parser's buffers,
    /// which read headers and bodies in their own chunks anyway.
    #[serde(default = "default_client_read_buffer_bytes")]
    pub client_read_buffer_bytes: Spanned<u64>,
    /// Client connections all listeners together may hold; default half of the descriptors
    /// left after a reserve (each may need an upstream connection too). Over it, new
    /// connections get a `503` and are closed.
    #[serde(default)]
    pub max_client_connections: Option<Spanned<u64>>,
    /// Client connections one IP address may hold; default: no per-IP cap (behind an L4
    /// balancer without PROXY protocol every client has the balancer's address).
    #[serde(default)]
    pub max_client_connections_per_ip: Option<Spanned<u64>>,
    /// Idle pooled upstream connections are closed after this; keep it under the replicas'
    /// own keep-alive (vLLM / trtllm-serve: 5 s) so we never write into a closing socket.
    #[serde(default = "default_upstream_idle_timeout_ms")]
    pub upstream_idle_timeout_ms: Spanned<u64>,
    /// Attempts on other replicas after a connect failure.
    #[serde(default = "default_connect_retries")]
    pub connect_retries: Spanned<usize>,
    /// SIGTERM: seconds to keep serving in-flight requests before runtimes shut down.
    #[serde(default = "default_grace_period_seconds")]
    pub grace_period_seconds: Spanned<u64>,
    #[serde(default = "default_graceful_shutdown_timeout_seconds")]
    pub graceful_shutdown_timeout_seconds: Spanned<u64>,
    /// Client keep-alive idle timeout.
    #[serde(default = "default_client_keepalive_seconds")]
    pub client_keepalive_seconds: Spanned<u64>,
    /// File holding the admin API bearer token (env `TOKENGATE_ADMIN_TOKEN` overrides).
    /// Without a token the `/admin/*` endpoints answer 401.
    #[serde(default)]
    pub admin_token_file: Option<Spanned<String>>,
    /// `stdout`, `off`, or a file path: one JSON line per request.
    #[serde(default = "default_access_log")]
    pub access_log: Spanned<String>,
    /// Runtime changes made over the admin API (replicas, clusters, aliases), merged over
    /// this file at every load; relative to this file. Default `<config stem>.overlay.toml`.
    #[serde(default)]
    pub overlay_file: Option<Spanned<String>>,
    /// Finished requests kept for `GET /admin/requests` (1-100000).
    #[serde(default = "default_recent_requests")]
    pub recent_requests: Spanned<usize>,
    /// Responses API ids remembered for routing follow-ups to the replica that stored them
    /// (1-10000000; oldest forgotten first).
    #[serde(default = "default_stored_responses")]
    pub stored_responses: Spanned<usize>,
    #[serde(default)]
    pub pid_file: Option<String>,
    #[serde(default)]
    pub upgrade_sock: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: Spanned<String>,
    pub flavour: Spanned<String>,
    pub replicas: Spanned<Vec<Spanned<String>>>,
    /// `round-robin` | `least-outstanding` (default) | `load-aware` | `prefix-affinity` |
    /// `scored`.
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    /// Shed load (503) when every replica's scraped queue is at least this.
    #[serde(default)]
    pub max_queue: Option<Spanned<f64>>,
    /// Shed load (503) when every replica has this many of our requests in flight.
    #[serde(default)]
    pub max_in_flight: Option<Spanned<usize>>,
    /// Wait (bounded) instead of shedding when every replica is saturated.
    #[serde(default)]
    pub queue: Option<QueueSection>,
    /// Bounded-load factor of `prefix-affinity` (default 1.5).
    #[serde(default)]
    pub bounded_load_factor: Option<Spanned<f64>>,
    /// Header whose value is the affinity key (e.g. a session id); default: the prompt prefix.
    #[serde(default)]
    pub affinity_header: Option<Spanned<String>>,
    /// API surfaces the replicas serve; default from the flavour.
    #[serde(default)]
    pub serves: Option<Spanned<Vec<Spanned<String>>>>,
    /// Weights of the `scored` policy.
    #[serde(default)]
    pub scored: Option<ScoredSection>,
    #[serde(default)]
    pub health: Option<HealthSection>,
    #[serde(default)]
    pub passive: Option<PassiveSection>,
    #[serde(default)]
    pub scrape: Option<ScrapeSection>,
    #[serde(default)]
    pub timeouts: Option<TimeoutSection>,
}

/// `queue = { max_depth = N, max_wait_ms = M }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub max_depth: Spanned<usize>,
    pub max_wait_ms: Spanned<u64>,
}

/// `[clusters.scored]`: the scored policy's weights (llm-d's defaults queue 2, kv 2, prefix 3).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScoredSection {
    pub queue: Option<Spanned<f64>>,
    pub kv: Option<Spanned<f64>>,
    pub prefix: Option<Spanned<f64>>,
    /// Prompt tokens per second a full-speed replica prefills (default 10 000).
    pub prefill_tokens_per_s: Option<Spanned<f64>>,
}

/// Active health checks; defaults per flavour (vLLM / trtllm `/health`, Triton `/health/ready`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub enabled: Option<bool>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    /// Consecutive failed probes that take a replica out (default 1).
    pub unhealthy_after: Option<Spanned<u32>>,
    /// Consecutive passing probes that bring it back (default 2).
    pub healthy_after: Option<Spanned<u32>>,
    pub path: Option<Spanned<String>>,
    pub port: Option<u16>,
}

/// Passive ejection from real requests' failures.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PassiveSection {
    /// Consecutive failures that eject (default 3; 0 disables).
    pub failures: Option<u32>,
    pub base_cooldown_ms: Option<Spanned<u64>>,
    pub max_cooldown_ms: Option<Spanned<u64>>,
}

/// Scraping the replicas' Prometheus metrics (for `load-aware` and `max_queue`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScrapeSection {
    pub enabled: Option<bool>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub path: Option<Spanned<String>>,
    pub port: Option<u16>,
}

/// Per-cluster overrides of the `[server]` upstream timeouts.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSection {
    pub connect_ms: Option<Spanned<u64>>,
    /// Time to first byte (first token) and each later gap between chunks.
    pub read_ms: Option<Spanned<u64>>,
    /// Whole response; a stream still running then ends with an error event.
    pub total_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The public name clients send in `model`.
    pub alias: Spanned<String>,
    pub cluster: Spanned<String>,
    /// The name the replicas serve (`--served-model-name`); defaults to the alias.
    #[serde(default)]
    pub served_name: Option<Spanned<String>>,
    /// Keep the served name in responses' `model` (default: rewritten back to the alias).
    #[serde(default)]
    pub expose_served_name: bool,
    /// Owner shown in `GET /v1/models`.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// Per-alias limits (protect a cluster): `tokens_per_minute`, `max_concurrent`.
    #[serde(default)]
    pub limits: Option<Spanned<ModelLimits>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The keys file (written by the admin API and `tokengate key new`), relative to this file.
    pub keys_file: Spanned<String>,
    /// Completion tokens reserved for a request that sends no `max_tokens` (default 256).
    #[serde(default)]
    pub default_completion_reservation: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// One bucket for the whole gateway.
    #[serde(default)]
    pub global: Option<Spanned<GlobalLimits>>,
}

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}
fn default_admin_listen() -> Spanned<String> {
    spanned("127.0.0.1:9090".to_string())
}
fn default_threads() -> Spanned<usize> {
    spanned(2)
}
fn default_work_stealing() -> bool {
    true
}
fn default_max_request_body_bytes() -> Spanned<u64> {
    spanned(16 * 1024 * 1024)
}
fn default_connect_timeout_ms() -> Spanned<u64> {
    spanned(2_000)
}
fn default_read_timeout_ms() -> Spanned<u64> {
    spanned(120_000)
}
fn default_write_timeout_ms() -> Spanned<u64> {
    spanned(30_000)
}
fn default_client_body_timeout_ms() -> Spanned<u64> {
    spanned(30_000)
}
fn default_upstream_idle_timeout_ms() -> Spanned<u64> {
    spanned(4_000)
}
fn default_connect_retries() -> Spanned<usize> {
    spanned(2)
}
fn default_grace_period_seconds() -> Spanned<u64> {
    spanned(10)
}
fn default_graceful_shutdown_timeout_seconds() -> Spanned<u64> {
    spanned(5)
}
fn default_access_log() -> Spanned<String> {
    spanned("stdout".to_string())
}
fn default_recent_requests() -> Spanned<usize> {
    spanned(1000)
}
fn default_stored_responses() -> Spanned<usize> {
    spanned(100_000)
}
fn default_tls_http2() -> bool {
    true
}
fn default_h2c() -> bool {
    true
}
fn default_client_header_timeout_ms() -> Spanned<u64> {
    spanned(10_000)
}

fn default_client_read_buffer_bytes() -> Spanned<u64> {
    spanned(DEFAULT_CLIENT_READ_BUFFER_BYTES)
}

/// See `client_read_buffer_bytes` (README, Benchmarks: chosen by measurement).
pub const DEFAULT_CLIENT_READ_BUFFER_BYTES: u64 = 0;

fn default_client_keepalive_seconds() -> Spanned<u64> {
    spanned(60)
}
