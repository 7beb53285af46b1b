//! Replica health and fleet-aware replica selection: the pure and shared-state parts.
//!
//! - [`flavour`]: which server software a replica runs (vLLM, trtllm-serve, Triton).
//! - [`settings`]: per-cluster knobs and per-flavour defaults (health/metrics paths).
//! - [`health`]: the active + passive health state machine of one replica.
//! - [`replica`]: `ReplicaState` (in-flight guard, latency EWMA, health, scraped load,
//!   draining), shared by all requests.
//! - [`registry`]: `Fleet`, states keyed by `cluster/ip:port` so they survive reloads.
//! - [`scrape`]: Prometheus text parsing into load samples (vLLM, trtllm-serve, Triton).
//! - [`fair_queue`]: the bounded wait queue of a saturated cluster (priority, then
//!   start-time fair queuing between keys).
//! - [`prefix`]: prompt block hashes and the per-replica index of recently routed prefixes.
//! - [`select`]: policies (round robin, least outstanding, load aware, prefix affinity,
//!   scored) and overload shedding.
//! - [`view`]: the admin `GET /admin/replicas` shape.
//!
//! Nothing here does I/O or reads the clock: the proxy and its background tasks pass `now`.

pub mod fair_queue;
pub mod flavour;
pub mod hash;
pub mod health;
pub mod prefix;
pub mod probe;
pub mod registry;
pub mod replica;
pub mod scrape;
pub mod select;
pub mod settings;
pub mod stored;
pub mod view;

pub use flavour::{Flavour, Surface, Surfaces};
pub use hash::prefix_key;
pub use health::{ActiveState, ErrorKind, HealthRules, Outcome, Transition};
pub use registry::Fleet;
pub use replica::{InFlight, LoadSample, ReplicaId, ReplicaState};
pub use scrape::extract_load;
pub use select::{Balancer, SelectCtx, SelectError};
pub use settings::{
    probe_status_is_healthy, BalanceSettings, FlavourDefaults, HealthSettings, PassiveSettings,
    Policy, QueueSettings, ScoreWeights, ScrapeSettings, TRITON_KSERVE_HEALTH_PATH,
};
pub use view::{ReplicaView, ViewState};
