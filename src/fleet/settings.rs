//! Per-cluster knobs for health checking, passive ejection and replica selection, plus the
//! per-flavour defaults (health and metrics paths). Plain data with documented defaults; the
//! config layer fills them from the file.

use std::fmt;
use std::time::Duration;

use super::Flavour;

/// Active health checks: a background task probes `path` every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Without active checks a replica is trusted from the start and only passive ejection
    /// takes it out (there is nothing that could ever admit a "starting" replica).
    pub enabled: bool,
    /// Time between probes of one replica. Default 2 s.
    pub interval: Duration,
    /// A probe that takes longer fails. Default 1 s (UPSTREAMS §9.11: 1–2 s).
    pub timeout: Duration,
    /// `k`: consecutive failed probes that take a healthy replica out. Default 1: vLLM and
    /// trtllm-serve answer 503 only when the engine is dead, and a refused connect means the
    /// process is gone, so waiting for a second probe only sends more requests to a corpse.
    pub unhealthy_after: u32,
    /// `m`: consecutive passing probes that bring an unhealthy replica back. Default 2, so a
    /// replica that crash-loops does not flap in and out on every lucky probe. A replica that
    /// that has never passed a probe ("starting") is admitted on its first pass instead: a booting
    /// vLLM does not even listen before its engine is built, so the first 200 is already
    /// conclusive, and waiting longer only delays capacity at proxy start.
    pub healthy_after: u32,
    /// Request path of the probe (see [`FlavourDefaults::health_path`]).
    pub path: String,
    /// Probe this port instead of the replica's serving port (e.g. a sidecar).
    pub port: Option<u16>,
}

impl HealthSettings {
    /// Defaults for a flavour: its health path, everything else as documented on the fields.
    pub fn for_flavour(flavour: Flavour) -> HealthSettings {
        HealthSettings {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_after: 1,
            healthy_after: 2,
            path: FlavourDefaults::of(flavour).health_path.to_string(),
            port: None,
        }
    }
}

/// Passive ejection from the outcomes of real requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveSettings {
    /// `n`: consecutive failed requests that eject a replica. 0 disables passive ejection.
    /// Default 3: a single refused connect is already retried elsewhere by the proxy, so one
    /// failure alone should not cost a replica its traffic.
    pub failures: u32,
    /// First cool-down. Default 5 s.
    pub base_cooldown: Duration,
    /// Each ejection that follows the previous one within `reset_after` doubles the cool-down,
    /// up to this. Default 5 min.
    pub max_cooldown: Duration,
    /// A replica that stayed in for this long since its last ejection ended starts over at
    /// `base_cooldown` the next time. Default 60 s.
    pub reset_after: Duration,
}

impl Default for PassiveSettings {
    fn default() -> Self {
        PassiveSettings {
            failures: 3,
            base_cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Load signals scraped from the replicas' Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeSettings {
    /// Off by default: only the `load-aware` policy and `max_queue` use scraped data.
    pub enabled: bool,
    /// Default 2 s.
    pub interval: Duration,
    /// Default 1 s.
    pub timeout: Duration,
    /// See [`FlavourDefaults::metrics_path`].
    pub path: String,
    /// Scrape this port instead of the serving port (Triton KServe serves metrics on 8002).
    pub port: Option<u16>,
}

impl ScrapeSettings {
    pub fn for_flavour(flavour: Flavour) -> ScrapeSettings {
        ScrapeSettings {
            enabled: false,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            path: FlavourDefaults::of(flavour).metrics_path.to_string(),
            port: None,
        }
    }

    /// How old a sample may get before selection stops trusting it: three missed scrapes.
    pub fn stale_after(&self) -> Duration {
        self.interval.saturating_mul(3)
    }
}

/// How a cluster picks a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Rotate over eligible replicas. Blind to load.
    RoundRobin,
    /// Power of two choices on the proxy's own in-flight count: cheap, always fresh, and good
    /// at keeping a slow replica from piling up work. Better than round robin because requests vary
    /// in length by orders of magnitude, which round robin ignores. The default for Triton.
    #[default]
    LeastOutstanding,
    /// Score from scraped queue depth, running count and KV use, corrected by the proxy's own
    /// in-flight changes since the scrape (see `select::load_score`).
    LoadAware,
    /// Rendezvous hashing of a prefix key so repeated prompts reuse one replica's KV cache,
    /// with bounded load.
    PrefixAffinity,
    /// Weighted score of queue depth, KV-cache use and the estimated prefix-cache hit (llm-d's
    /// scorers), within the bounded load (see `select::scored`).
    Scored,
}

impl Policy {
    /// The policy of a cluster that names none: `scored` for vLLM and trtllm-serve (they
    /// export queue and KV metrics, and it wins the policies benchmark), `least-outstanding`
    /// for Triton's frontend.
    pub fn default_for(flavour: super::Flavour) -> Policy {
        match flavour {
            super::Flavour::Vllm | super::Flavour::Trtllm => Policy::Scored,
            super::Flavour::TritonOpenai => Policy::LeastOutstanding,
        }
    }

    pub const NAMES: &'static str =
        "round-robin, least-outstanding, load-aware, prefix-affinity, scored";

    pub fn parse(name: &str) -> Option<Policy> {
        match name {
            "round-robin" => Some(Policy::RoundRobin),
            "least-outstanding" => Some(Policy::LeastOutstanding),
            "load-aware" => Some(Policy::LoadAware),
            "prefix-affinity" => Some(Policy::PrefixAffinity),
            "scored" => Some(Policy::Scored),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastOutstanding => "least-outstanding",
            Policy::LoadAware => "load-aware",
            Policy::PrefixAffinity => "prefix-affinity",
            Policy::Scored => "scored",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Selection and overload shedding for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceSettings {
    pub policy: Policy,
    /// A replica whose fresh scraped queue (`waiting`) is at least this is saturated.
    /// `None` (default): no queue limit.
    pub max_queue: Option<f64>,
    /// A replica with at least this many of the proxy's own requests in flight is saturated.
    /// `None` (default): no limit.
    pub max_in_flight: Option<usize>,
    /// `c` of bounded-load consistent hashing: a replica takes its prefix's request only while
    /// its in-flight count stays within `c ×` the cluster average `+ 1`. Default 1.5, above
    /// the usual 1.25 because a prefix-cache hit saves a whole prefill: in simulation 1.5 keeps
    /// ≥ 95 % of a prefix carrying up to a fifth of the traffic on its replica, where 1.25
    /// drops to ~85 %. Values below 1 are treated as 1.
    pub bounded_load_factor: f64,
    /// Scraped samples older than this are ignored. Default 6 s (3 × the default 2 s scrape
    /// interval; the config layer should pass `ScrapeSettings::stale_after`).
    pub stale_after: Duration,
    /// What the proxy tells clients in `Retry-After` when every replica is saturated.
    /// Default 1 s; keep it ≤ 60 s (UPSTREAMS §9.10).
    pub retry_after: Duration,
    /// Wait in a bounded queue when every replica is saturated; `None` (default): shed at
    /// once (503).
    pub queue: Option<QueueSettings>,
    /// The `scored` policy's weights.
    pub weights: ScoreWeights,
    /// The `scored` policy's estimate of a full-speed replica's prefill rate (prompt tokens per
    /// second), to price a prefix-cache miss against a longer wait. Default 10 000 (vLLM,
    /// Llama-3.1-8B on one A100/H100: several thousand to tens of thousands).
    pub prefill_tokens_per_s: f64,
}

/// `[[clusters]] queue = { max_depth, max_wait_ms }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Requests that may wait at once; the next one is refused (503).
    pub max_depth: usize,
    /// How long one may wait before it is answered 503 `overloaded`.
    pub max_wait: Duration,
}

/// Weights of the `scored` policy's three scorers, each worth 0..=1 per replica. Defaults
/// are llm-d's (queue 2, KV 2, prefix 3): a likely prefix-cache hit outweighs either load
/// signal alone, but not both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    pub queue: f64,
    pub kv: f64,
    pub prefix: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            queue: 2.0,
            kv: 2.0,
            prefix: 3.0,
        }
    }
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            policy: Policy::default(),
            max_queue: None,
            max_in_flight: None,
            bounded_load_factor: 1.5,
            stale_after: Duration::from_secs(6),
            retry_after: Duration::from_secs(1),
            queue: None,
            weights: ScoreWeights::default(),
            prefill_tokens_per_s: 10_000.0,
        }
    }
}

/// Paths each server flavour serves (UPSTREAMS §2, §4, §9.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlavourDefaults {
    pub health_path: &'static str,
    pub metrics_path: &'static str,
}

/// Triton's KServe readiness route, for Triton servers run without the OpenAI frontend's
/// `/health/ready` (set it as `HealthSettings::path`).
pub const TRITON_KSERVE_HEALTH_PATH: &str = "/v2/health/ready";

impl FlavourDefaults {
    pub fn of(flavour: Flavour) -> FlavourDefaults {
        match flavour {
            Flavour::Vllm => FlavourDefaults {
                health_path: "/health",
                metrics_path: "/metrics",
            },
            // `/metrics` on trtllm-serve is JSON and destructive (reading it drains a queue),
            // so only the Prometheus route is ever scraped.
            Flavour::Trtllm => FlavourDefaults {
                health_path: "/health",
                metrics_path: "/prometheus/metrics",
            },
            Flavour::TritonOpenai => FlavourDefaults {
                health_path: "/health/ready",
                metrics_path: "/metrics",
            },
        }
    }
}

/// Whether a probe's HTTP status means "up". Only 200 does: every flavour answers 200 when
/// ready and 503 (vLLM, trtllm-serve) or 400 (Triton) otherwise; redirects and other 2xx are
/// not part of any of their contracts, so they are treated as a misconfigured path.
pub fn probe_status_is_healthy(status: u16) -> bool {
    status == 200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for p in [
            Policy::RoundRobin,
            Policy::LeastOutstanding,
            Policy::LoadAware,
            Policy::PrefixAffinity,
            Policy::Scored,
        ] {
            assert_eq!(Policy::parse(p.as_str()), Some(p));
            assert!(Policy::NAMES.contains(p.as_str()));
        }
        assert_eq!(Policy::parse("random"), None);
    }

    #[test]
    fn flavour_paths() {
        assert_eq!(HealthSettings::for_flavour(Flavour::Vllm).path, "/health");
        assert_eq!(HealthSettings::for_flavour(Flavour::Trtllm).path, "/health");
        assert_eq!(
            HealthSettings::for_flavour(Flavour::TritonOpenai).path,
            "/health/ready"
        );
        assert_eq!(ScrapeSettings::for_flavour(Flavour::Vllm).path, "/metrics");
        assert_eq!(
            ScrapeSettings::for_flavour(Flavour::Trtllm).path,
            "/prometheus/metrics"
        );
        assert_eq!(
            ScrapeSettings::for_flavour(Flavour::TritonOpenai).path,
            "/metrics"
        );
        assert_eq!(
            ScrapeSettings::for_flavour(Flavour::Vllm).stale_after(),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn only_200_is_healthy() {
        assert!(probe_status_is_healthy(200));
        for s in [204, 301, 400, 404, 500, 503] {
            assert!(!probe_status_is_healthy(s));
        }
    }
}
