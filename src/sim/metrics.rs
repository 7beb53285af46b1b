//! Prometheus text (format 0.0.4) reflecting the simulator's real in-flight load.

use super::engine::EngineStats;
use super::Flavour;

/// The scheduler view of `in_flight` requests on a replica with `max_running` slots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub running: u64,
    pub waiting: u64,
    /// KV-cache use, 0..1: the fraction of running slots taken.
    pub kv_usage: f64,
    /// Prefix-cache counters in tokens (batching engine only; `None` omits them).
    pub prefix_cache: Option<(u64, u64)>,
}

impl Load {
    pub fn from_in_flight(in_flight: u64, max_running: u64) -> Self {
        let running = in_flight.min(max_running);
        let kv_usage = if max_running == 0 {
            0.0
        } else {
            running as f64 / max_running as f64
        };
        Self {
            running,
            waiting: in_flight - running,
            kv_usage,
            prefix_cache: None,
        }
    }

    /// The batching engine's real queue, batch, KV use and prefix-cache counters.
    pub fn from_engine(stats: EngineStats) -> Self {
        Self {
            running: stats.running,
            waiting: stats.waiting,
            kv_usage: stats.kv_usage,
            prefix_cache: Some((stats.prefix_hits_tokens, stats.prefix_queries_tokens)),
        }
    }
}

/// Formats a sample value like Python's `repr(float)`, which prometheus_client uses.
fn sample(value: f64) -> String {
    format!("{value:?}")
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {}\n",
        sample(value as f64)
    ));
}

fn gauge(out: &mut String, name: &str, help: &str, labels: &str, value: f64) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {}\n",
        sample(value)
    ));
}

/// Prometheus exposition text for `flavour`. `model_name` is vLLM's first served name.
pub fn render(flavour: Flavour, model_name: &str, load: Load) -> String {
    let mut out = String::new();
    match flavour {
        Flavour::Trtllm => {
            // trtllm-serve hard-codes its label values.
            let labels = r#"engine_type="undefined",model_name="undefined""#;
            gauge(
                &mut out,
                "trtllm_num_requests_running",
                "Number of requests currently running.",
                labels,
                load.running as f64,
            );
            gauge(
                &mut out,
                "trtllm_num_requests_waiting",
                "Number of requests waiting to be scheduled.",
                labels,
                load.waiting as f64,
            );
            gauge(
                &mut out,
                "trtllm_kv_cache_utilization",
                "KV-cache utilization, 1 means 100 percent.",
                labels,
                load.kv_usage,
            );
        }
        Flavour::Vllm | Flavour::TritonOpenai => {
            let escaped = model_name
                .replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let labels = format!(r#"engine="0",model_name="{escaped}""#);
            gauge(
                &mut out,
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                &labels,
                load.running as f64,
            );
            gauge(
                &mut out,
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                &labels,
                load.waiting as f64,
            );
            gauge(
                &mut out,
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                &labels,
                load.kv_usage,
            );
            if let Some((hits, queries)) = load.prefix_cache {
                counter(
                    &mut out,
                    "vllm:prefix_cache_queries_total",
                    "Prefix cache queries, in terms of number of queried tokens.",
                    &labels,
                    queries,
                );
                counter(
                    &mut out,
                    "vllm:prefix_cache_hits_total",
                    "Prefix cache hits, in terms of number of cached tokens.",
                    &labels,
                    hits,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_splits_running_and_waiting() {
        assert_eq!(
            Load::from_in_flight(10, 8),
            Load {
                running: 8,
                waiting: 2,
                kv_usage: 1.0,
                prefix_cache: None,
            }
        );
        assert_eq!(Load::from_in_flight(2, 8).kv_usage, 0.25);
        assert_eq!(Load::from_in_flight(3, 0).waiting, 3);
    }

    #[test]
    fn vllm_text_has_help_type_and_float_samples() {
        let text = render(Flavour::Vllm, "m", Load::from_in_flight(1, 8));
        assert!(text.contains("# TYPE vllm:num_requests_running gauge\n"));
        assert!(text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1.0\n"));
        assert!(text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 0.0\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.125\n"));
    }

    #[test]
    fn trtllm_text_uses_its_names() {
        let text = render(Flavour::Trtllm, "m", Load::from_in_flight(0, 8));
        assert!(text.contains("trtllm_num_requests_waiting{"));
        assert!(text.contains("trtllm_kv_cache_utilization{"));
        assert!(!text.contains("vllm:"));
    }
}
