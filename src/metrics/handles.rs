//! Metric handles resolved once per config snapshot: a request bumps its route's and cluster's
//! series through these instead of `with_label_values`, which hashes every label value and
//! takes the vector's lock on each call. Each handle is resolved on first use (a series
//! appears in `/metrics` only once something was counted in it, as before) and then kept for
//! the snapshot's life.
//!
//! Key-labelled series (`tokengate_key_requests_total`, `tokengate_tokens_total`) are still
//! looked up per request: keys change through the admin API between snapshots, and the key ×
//! model × source space is not known when a snapshot is built.

use std::sync::OnceLock;

use prometheus::{Histogram, IntCounter, IntGauge};

use super::{
    status_class_index, INTER_TOKEN_LATENCY, IN_FLIGHT, PROXY_OVERHEAD, REQUESTS, REQUEST_DURATION,
    RETRIES, STATUS_CLASSES, TIME_TO_FIRST_TOKEN, TRUNCATED_STREAMS,
};
use crate::routing::Endpoint;

/// A series resolved the first time it is needed.
struct Lazy<T>(OnceLock<T>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(OnceLock::new())
    }
}

impl<T> Lazy<T> {
    fn get(&self, resolve: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(resolve)
    }
}

/// One cluster's series.
pub struct ClusterMetrics {
    cluster: String,
    in_flight: Lazy<IntGauge>,
    retries: Lazy<IntCounter>,
}

impl ClusterMetrics {
    pub fn new(cluster: &str) -> ClusterMetrics {
        ClusterMetrics {
            cluster: cluster.to_string(),
            in_flight: Lazy::default(),
            retries: Lazy::default(),
        }
    }

    /// `tokengate_in_flight_requests{cluster}`.
    pub fn in_flight(&self) -> &IntGauge {
        self.in_flight
            .get(|| IN_FLIGHT.with_label_values(&[&self.cluster]))
    }

    /// `tokengate_retries_total{cluster}`.
    pub fn retries(&self) -> &IntCounter {
        self.retries
            .get(|| RETRIES.with_label_values(&[&self.cluster]))
    }
}

/// The series of one model alias on its cluster.
pub struct RouteMetrics {
    model: String,
    cluster: String,
    /// `tokengate_requests_total` by endpoint, then status class.
    requests: Box<[[Lazy<IntCounter>; STATUS_CLASSES.len()]; Endpoint::ALL.len()]>,
    duration: Lazy<Histogram>,
    ttft: Lazy<Histogram>,
    inter_token: Lazy<Histogram>,
    truncated: Lazy<IntCounter>,
}

impl RouteMetrics {
    pub fn new(model: &str, cluster: &str) -> RouteMetrics {
        RouteMetrics {
            model: model.to_string(),
            cluster: cluster.to_string(),
            requests: Box::default(),
            duration: Lazy::default(),
            ttft: Lazy::default(),
            inter_token: Lazy::default(),
            truncated: Lazy::default(),
        }
    }

    /// Whether these are the series of `model` on `cluster` (a rule may send a model's request
    /// to another cluster: that request takes the looked-up path).
    pub fn is_for(&self, model: &str, cluster: &str) -> bool {
        self.model == model && self.cluster == cluster
    }

    /// `tokengate_requests_total{model, cluster, endpoint, status_class}`.
    pub fn requests(&self, endpoint: Endpoint, status: u16) -> &IntCounter {
        let class = status_class_index(status);
        self.requests[endpoint.index()][class].get(|| {
            REQUESTS.with_label_values(&[
                &self.model,
                &self.cluster,
                endpoint.as_str(),
                STATUS_CLASSES[class],
            ])
        })
    }

    /// `tokengate_request_duration_seconds{model}`.
    pub fn duration(&self) -> &Histogram {
        self.duration
            .get(|| REQUEST_DURATION.with_label_values(&[&self.model]))
    }

    /// `tokengate_time_to_first_token_seconds{model}`.
    pub fn ttft(&self) -> &Histogram {
        self.ttft
            .get(|| TIME_TO_FIRST_TOKEN.with_label_values(&[&self.model]))
    }

    /// `tokengate_inter_token_latency_seconds{model}`.
    pub fn inter_token(&self) -> &Histogram {
        self.inter_token
            .get(|| INTER_TOKEN_LATENCY.with_label_values(&[&self.model]))
    }

    /// `tokengate_truncated_streams_total{model}`.
    pub fn truncated(&self) -> &IntCounter {
        self.truncated
            .get(|| TRUNCATED_STREAMS.with_label_values(&[&self.model]))
    }
}

/// `tokengate_proxy_overhead_seconds{endpoint}`: the endpoints are a fixed set, resolved once
/// per process.
pub fn proxy_overhead(endpoint: Endpoint) -> &'static Histogram {
    static BY_ENDPOINT: OnceLock<Box<[Lazy<Histogram>; Endpoint::ALL.len()]>> = OnceLock::new();
    BY_ENDPOINT.get_or_init(Box::default)[endpoint.index()]
        .get(|| PROXY_OVERHEAD.with_label_values(&[endpoint.as_str()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_count_in_the_labelled_series() {
        let route = RouteMetrics::new("handles-test-model", "handles-test-cluster");
        route.requests(Endpoint::Messages, 429).inc();
        route.requests(Endpoint::Messages, 429).inc();
        route.requests(Endpoint::ChatCompletions, 200).inc();
        let count = |endpoint: &str, class: &str| {
            REQUESTS
                .with_label_values(&[
                    "handles-test-model",
                    "handles-test-cluster",
                    endpoint,
                    class,
                ])
                .get()
        };
        assert_eq!(count("messages", "4xx"), 2);
        assert_eq!(count("chat_completions", "2xx"), 1);
        assert_eq!(count("chat_completions", "4xx"), 0);
        route.truncated().inc();
        assert_eq!(
            TRUNCATED_STREAMS
                .with_label_values(&["handles-test-model"])
                .get(),
            1
        );
        assert!(route.is_for("handles-test-model", "handles-test-cluster"));
        assert!(!route.is_for("handles-test-model", "other-cluster"));

        let cluster = ClusterMetrics::new("handles-test-cluster");
        cluster.in_flight().inc();
        cluster.retries().inc_by(2);
        assert_eq!(
            IN_FLIGHT.with_label_values(&["handles-test-cluster"]).get(),
            1
        );
        assert_eq!(
            RETRIES.with_label_values(&["handles-test-cluster"]).get(),
            2
        );
        cluster.in_flight().dec();

        proxy_overhead(Endpoint::Embeddings).observe(0.001);
        assert_eq!(
            PROXY_OVERHEAD
                .with_label_values(&["embeddings"])
                .get_sample_count(),
            1
        );
    }

    #[test]
    fn every_endpoint_has_its_own_slot() {
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(endpoint.index(), i);
        }
    }
}
