//! Fleet-mode series (registered in the default registry, so `/metrics` shows them once fleet
//! mode starts; a single node never registers them).

// Registration fails only on a duplicate name, a bug caught by the first test that renders.
#![allow(clippy::expect_used)]

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};

pub static REDIS_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tokengate_fleet_redis_up",
        "1 while the fleet's Redis answers, 0 while this instance runs on its fallback."
    )
    .expect("metric registers once")
});

pub static INSTANCES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tokengate_fleet_instances",
        "Live instances last seen in the heartbeat set (the N̂ of the fallback share)."
    )
    .expect("metric registers once")
});

pub static LEASE_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tokengate_fleet_lease_calls_total",
        "Lease exchanges with Redis, by result (ok, failed).",
        &["result"]
    )
    .expect("metric registers once")
});

pub static LEASED_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tokengate_fleet_leased_total",
        "Tokens and requests granted to this instance by lease exchanges."
    )
    .expect("metric registers once")
});

pub static FALLBACKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tokengate_fleet_fallback_total",
        "Times this instance lost Redis and fell back to its local share (on_redis_down)."
    )
    .expect("metric registers once")
});

pub static KEY_SYNCS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tokengate_fleet_key_syncs_total",
        "Key registry reloads from Redis, by trigger (notify, version_check, reconnect).",
        &["trigger"]
    )
    .expect("metric registers once")
});

pub fn force() {
    LazyLock::force(&REDIS_UP);
    LazyLock::force(&INSTANCES);
    LazyLock::force(&LEASE_CALLS);
    LazyLock::force(&LEASED_TOKENS);
    LazyLock::force(&FALLBACKS);
    LazyLock::force(&KEY_SYNCS);
    for r in ["ok", "failed"] {
        LEASE_CALLS.with_label_values(&[r]);
    }
}
