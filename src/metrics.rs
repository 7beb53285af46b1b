//! Prometheus series, registered once in the default registry. Label values are bounded:
//! model aliases and cluster names come from config (anything else is `other`), key *names*
//! (never secrets), fixed enums for kinds and classes.

// Start-up invariant: registering fails only on a duplicate metric name, a bug caught by the
// first scrape of any test; there is no caller to return an error to from a static.
#![allow(clippy::expect_used)]

use std::sync::LazyLock;

use crate::routing::Endpoint;

pub mod handles;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    TextEncoder,
};

macro_rules! counter_vec {
    ($name:ident, $metric:literal, $help:literal, $labels:expr) => {
        pub static $name: LazyLock<IntCounterVec> = LazyLock::new(|| {
            register_int_counter_vec!($metric, $help, $labels).expect("metric registers once")
        });
    };
}

macro_rules! histogram_vec {
    ($name:ident, $metric:literal, $help:literal, $labels:expr, $buckets:expr) => {
        pub static $name: LazyLock<HistogramVec> = LazyLock::new(|| {
            register_histogram_vec!($metric, $help, $labels, $buckets.to_vec())
                .expect("metric registers once")
        });
    };
}

counter_vec!(
    REQUESTS,
    "tokengate_requests_total",
    "Requests answered, by model alias, cluster, endpoint (chat_completions, messages, ...) and status class (2xx, 4xx, 5xx, none; client_closed: the client went away first, logged as 499).",
    &["model", "cluster", "endpoint", "status_class"]
);
counter_vec!(
    KEY_REQUESTS,
    "tokengate_key_requests_total",
    "Requests answered, by API key name (`-`: none or not valid) and status class.",
    &["key", "status_class"]
);
histogram_vec!(
    REQUEST_DURATION,
    "tokengate_request_duration_seconds",
    "Whole-request duration, from the request header to the last response byte.",
    &["model"],
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
);
histogram_vec!(
    TIME_TO_FIRST_TOKEN,
    "tokengate_time_to_first_token_seconds",
    "From sending the request upstream to the first content token of a stream.",
    &["model"],
    [0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]
);
histogram_vec!(
    INTER_TOKEN_LATENCY,
    "tokengate_inter_token_latency_seconds",
    "Mean gap between token-bearing events of one stream (observed once per stream).",
    &["model"],
    [0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5]
);
histogram_vec!(
    PROXY_OVERHEAD,
    "tokengate_proxy_overhead_seconds",
    "Time spent in tokengate itself per request: admission (without waiting for the client's \
     body), upstream preparation and response filtering.",
    &["endpoint"],
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]
);
counter_vec!(
    TOKENS,
    "tokengate_tokens_total",
    "Tokens metered, by key name, model alias, kind (prompt|completion) and source \
     (upstream_usage|continuous|estimated).",
    &["key", "model", "kind", "source"]
);
counter_vec!(
    TRUNCATED_STREAMS,
    "tokengate_truncated_streams_total",
    "Streams that ended without [DONE] (replica died or cut the connection).",
    &["model"]
);
counter_vec!(
    LOCAL_ERRORS,
    "tokengate_local_errors_total",
    "Errors tokengate answered itself (not relayed from a replica), by error code (a fixed set; \
     rule denials are `rule_denied`).",
    &["code"]
);
counter_vec!(
    RATE_LIMITED,
    "tokengate_rate_limited_total",
    "Requests refused with 429, by the limit that refused them.",
    &["limit"]
);
counter_vec!(
    REPLICA_TRANSITIONS,
    "tokengate_replica_transitions_total",
    "Replica health transitions caused by probes, by cluster and kind (up, down, ejected, \
     readmitted).",
    &["cluster", "to"]
);

macro_rules! gauge_vec {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
            prometheus::register_gauge_vec!($metric, $help, &["cluster", "replica"])
                .expect("metric registers once")
        });
    };
}

gauge_vec!(
    REPLICA_HEALTHY,
    "tokengate_replica_healthy",
    "1 when the replica may receive requests (healthy, not ejected, not draining)."
);
gauge_vec!(
    REPLICA_DRAINING,
    "tokengate_replica_draining",
    "1 while the replica is drained by an operator."
);
gauge_vec!(
    REPLICA_IN_FLIGHT,
    "tokengate_replica_in_flight",
    "Requests tokengate has in flight on the replica."
);
gauge_vec!(
    REPLICA_QUEUE,
    "tokengate_replica_queue_waiting",
    "The replica's scraped queue depth (requests waiting), when scraped."
);
gauge_vec!(
    REPLICA_KV_USAGE,
    "tokengate_replica_kv_cache_usage",
    "The replica's scraped KV-cache use (0..1), when scraped."
);

/// Refresh the per-replica gauges from the fleet (at scrape time; removed replicas vanish).
pub fn observe_fleet(views: &[crate::fleet::ReplicaView]) {
    for g in [
        &*REPLICA_HEALTHY,
        &*REPLICA_DRAINING,
        &*REPLICA_IN_FLIGHT,
        &*REPLICA_QUEUE,
        &*REPLICA_KV_USAGE,
    ] {
        g.reset();
    }
    for v in views {
        let addr = v.addr.to_string();
        let labels = [v.cluster.as_str(), addr.as_str()];
        REPLICA_HEALTHY
            .with_label_values(&labels)
            .set(if v.eligible { 1.0 } else { 0.0 });
        REPLICA_DRAINING.with_label_values(&labels).set(
            if matches!(v.state, crate::fleet::ViewState::Draining) {
                1.0
            } else {
                0.0
            },
        );
        REPLICA_IN_FLIGHT
            .with_label_values(&labels)
            .set(v.in_flight as f64);
        if let Some(load) = &v.load {
            if let Some(w) = load.waiting {
                REPLICA_QUEUE.with_label_values(&labels).set(w);
            }
            if let Some(k) = load.kv_usage {
                REPLICA_KV_USAGE.with_label_values(&labels).set(k);
            }
        }
    }
}

counter_vec!(
    RULE_TAGS,
    "tokengate_rule_tags_total",
    "Requests tagged by lua-free rules, by tag (only tags declared in rule files).",
    &["tag"]
);
counter_vec!(
    UPSTREAM_ERRORS,
    "tokengate_upstream_errors_total",
    "Upstream failures by cluster and kind (connect_refused, connect_timeout, read_timeout, \
     closed, http_5xx, http_4xx, stream_error: an error event mid-stream, other).",
    &["cluster", "kind"]
);
counter_vec!(
    RETRIES,
    "tokengate_retries_total",
    "Upstream attempts beyond the first, by cluster.",
    &["cluster"]
);
counter_vec!(
    RELOADS,
    "tokengate_config_reloads_total",
    "Configuration reloads by trigger (admin, signal) and result (ok, rejected).",
    &["trigger", "result"]
);

pub static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tokengate_in_flight_requests",
        "Requests currently proxied, by cluster.",
        &["cluster"]
    )
    .expect("metric registers once")
});

pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tokengate_queue_depth",
        "Requests waiting in a saturated cluster's admission queue.",
        &["cluster"]
    )
    .expect("metric registers once")
});

histogram_vec!(
    QUEUE_WAIT,
    "tokengate_queue_wait_seconds",
    "Time requests that got a slot spent in the cluster's admission queue.",
    &["cluster"],
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
);

counter_vec!(
    QUEUE_REJECTED,
    "tokengate_queue_rejected_total",
    "Requests that left an admission queue without a slot (reason: full|timeout|client_closed).",
    &["cluster", "reason"]
);

pub static CONFIG_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tokengate_config_generation",
        "Generation of the configuration in force (1 at start, +1 per successful reload)."
    )
    .expect("metric registers once")
});

pub static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tokengate_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind."
    )
    .expect("metric registers once")
});

pub static CLIENT_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tokengate_client_connections",
        "Client connections open on the proxy listeners."
    )
    .expect("metric registers once")
});

counter_vec!(
    CLIENT_CONNECTIONS_REFUSED,
    "tokengate_client_connections_refused_total",
    "Client connections turned away at accept by a cap (reason: total|per_ip).",
    &["reason"]
);

pub static CLIENT_HEADER_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tokengate_client_header_timeouts_total",
        "Requests whose header did not arrive whole within server.client_header_timeout_ms \
         (answered 408)."
    )
    .expect("metric registers once")
});

/// The `status_class` label's values, indexed by `status_class_index`.
pub const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "client_closed", "4xx", "5xx", "none"];

/// Index into `STATUS_CLASSES`: `none` when no response was written (client gone).
pub fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        // nginx's "client closed request": the client left before the answer was complete.
        499 => 3,
        400..=498 => 4,
        500..=599 => 5,
        _ => 6,
    }
}

/// `2xx`, `4xx`, ...; `none` when no response was written (client gone).
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// One finished request, through its route's handles when it has them (`handles`), else by
/// label lookup (no route yet: a 401, a bad body; or a rule sent the model elsewhere).
pub fn record_request(
    request: RequestLabels<'_>,
    status: u16,
    seconds: f64,
    route: Option<&handles::RouteMetrics>,
) {
    match (route, request.endpoint) {
        (Some(route), Some(endpoint)) => route.requests(endpoint, status).inc(),
        _ => REQUESTS
            .with_label_values(&[
                request.model,
                request.cluster,
                request.endpoint.map_or("-", Endpoint::as_str),
                status_class(status),
            ])
            .inc(),
    }
    KEY_REQUESTS
        .with_label_values(&[request.key, status_class(status)])
        .inc();
    match route {
        Some(route) => route.duration().observe(seconds),
        None => REQUEST_DURATION
            .with_label_values(&[request.model])
            .observe(seconds),
    }
}

/// The labels of one request's series.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels<'a> {
    pub key: &'a str,
    pub model: &'a str,
    pub cluster: &'a str,
    pub endpoint: Option<Endpoint>,
}

/// Record one request's metered usage.
pub fn record_usage(
    key: &str,
    model: &str,
    usage: &crate::metering::UsageRecord,
    route: Option<&handles::RouteMetrics>,
) {
    let source = usage.source.as_str();
    if usage.prompt_tokens > 0 {
        TOKENS
            .with_label_values(&[key, model, "prompt", source])
            .inc_by(usage.prompt_tokens);
    }
    if usage.completion_tokens > 0 {
        TOKENS
            .with_label_values(&[key, model, "completion", source])
            .inc_by(usage.completion_tokens);
    }
    if usage.truncated {
        match route {
            Some(route) => route.truncated().inc(),
            None => TRUNCATED_STREAMS.with_label_values(&[model]).inc(),
        }
    }
    if let Some(ttft) = usage.ttft {
        match route {
            Some(route) => route.ttft().observe(ttft.as_secs_f64()),
            None => TIME_TO_FIRST_TOKEN
                .with_label_values(&[model])
                .observe(ttft.as_secs_f64()),
        }
    }
    if let Some(mean) = usage.inter_token.mean() {
        match route {
            Some(route) => route.inter_token().observe(mean.as_secs_f64()),
            None => INTER_TOKEN_LATENCY
                .with_label_values(&[model])
                .observe(mean.as_secs_f64()),
        }
    }
}

/// Requests and tokens so far, for the event stream's once-a-second summary (off the hot
/// path: it reads the counters the requests already bumped).
pub fn event_counters() -> crate::events::summary::Counters {
    use prometheus::core::Collector;
    let mut out = crate::events::summary::Counters::default();
    for m in REQUESTS.collect().iter().flat_map(|f| f.get_metric()) {
        let label = |name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map_or("", |l| l.value())
        };
        let n = m.get_counter().value() as u64;
        let count = out
            .requests
            .entry((label("model").to_string(), label("cluster").to_string()))
            .or_default();
        count.requests += n;
        if matches!(label("status_class"), "4xx" | "5xx") {
            count.errors += n;
        }
    }
    for m in TOKENS.collect().iter().flat_map(|f| f.get_metric()) {
        let model = m
            .get_label()
            .iter()
            .find(|l| l.name() == "model")
            .map_or("", |l| l.value());
        *out.tokens.entry(model.to_string()).or_default() += m.get_counter().value() as u64;
    }
    out
}

/// The text exposition of every registered series. Every family is touched first so it is
/// listed (with HELP/TYPE) before its first sample.
pub fn render() -> String {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&KEY_REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&TIME_TO_FIRST_TOKEN);
    LazyLock::force(&INTER_TOKEN_LATENCY);
    LazyLock::force(&PROXY_OVERHEAD);
    LazyLock::force(&TOKENS);
    LazyLock::force(&TRUNCATED_STREAMS);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&RULE_TAGS);
    LazyLock::force(&REPLICA_TRANSITIONS);
    LazyLock::force(&RETRIES);
    LazyLock::force(&RELOADS);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&QUEUE_REJECTED);
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default()
}
