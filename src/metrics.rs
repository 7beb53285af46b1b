//! Prometheus series. Registered once in the default registry; label values are bounded
//! (model aliases and cluster names from config, status classes).

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec, TextEncoder,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tokengate_requests_total",
        "Requests answered, by model alias, cluster and status class.",
        &["model", "cluster", "status_class"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tokengate_request_duration_seconds",
        "Whole-request duration, from the request header to the last response byte.",
        &["model"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
        ]
    )
    .expect("metric registers once")
});

/// `2xx`, `4xx`, ...; `0` means no response was written (client gone).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

pub fn record_request(model: &str, cluster: &str, status: u16, seconds: f64) {
    REQUESTS
        .with_label_values(&[model, cluster, status_class(status)])
        .inc();
    REQUEST_DURATION
        .with_label_values(&[model])
        .observe(seconds);
}

/// The text exposition of every registered series.
pub fn render() -> String {
    // Touch the lazies so the series exist (with HELP/TYPE) before the first request.
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
