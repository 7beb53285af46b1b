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

pub static TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tokengate_tokens_total",
        "Tokens metered, by model alias, kind (prompt|completion) and source \
         (upstream_usage|continuous|estimated).",
        &["model", "kind", "source"]
    )
    .expect("metric registers once")
});

pub static TRUNCATED_STREAMS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tokengate_truncated_streams_total",
        "Streams that ended without [DONE] (replica died or cut the connection).",
        &["model"]
    )
    .expect("metric registers once")
});

pub static TIME_TO_FIRST_TOKEN: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tokengate_time_to_first_token_seconds",
        "From sending the request upstream to the first content token of a stream.",
        &["model"],
        vec![0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]
    )
    .expect("metric registers once")
});

/// Record one request's metered usage.
pub fn record_usage(model: &str, usage: &crate::metering::UsageRecord) {
    let source = usage.source.as_str();
    if usage.prompt_tokens > 0 {
        TOKENS
            .with_label_values(&[model, "prompt", source])
            .inc_by(usage.prompt_tokens);
    }
    if usage.completion_tokens > 0 {
        TOKENS
            .with_label_values(&[model, "completion", source])
            .inc_by(usage.completion_tokens);
    }
    if usage.truncated {
        TRUNCATED_STREAMS.with_label_values(&[model]).inc();
    }
    if let Some(ttft) = usage.ttft {
        TIME_TO_FIRST_TOKEN
            .with_label_values(&[model])
            .observe(ttft.as_secs_f64());
    }
}

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
    LazyLock::force(&TOKENS);
    LazyLock::force(&TRUNCATED_STREAMS);
    LazyLock::force(&TIME_TO_FIRST_TOKEN);
    TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
