//! Tests of metrics parsing and load extraction.

use super::*;
use proptest::prelude::*;

const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 4.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.25
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="llama"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="llama"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="llama"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="llama"} 1.5e-01
# HELP vllm:num_requests_waiting_total not the gauge
vllm:num_requests_waiting_total{engine="0",model_name="llama"} 99.0
"#;

const VLLM_OLD: &str = r#"# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
vllm:num_requests_running{model_name="m"} 1.0
"#;

const TRTLLM: &str = r#"# HELP trtllm_num_requests_waiting Number of requests waiting
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{engine_type="undefined",model_name="undefined"} 7.0
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{engine_type="undefined",model_name="undefined"} 16.0
# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{engine_type="undefined",model_name="undefined"} 0.875
"#;

const TRITON: &str = r#"# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 9
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 9
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 5
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 5
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.3125
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4096
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1280
"#;

#[test]
fn vllm_sums_over_engines() {
    let at = Instant::now();
    let l = extract_load(Flavour::Vllm, VLLM, at);
    assert_eq!(l.waiting, Some(4.0));
    assert_eq!(l.running, Some(6.0));
    assert_eq!(l.kv_usage, Some(0.375));
    assert_eq!(l.at, at);
}

#[test]
fn vllm_old_kv_name_and_missing_series_are_unknown() {
    let l = extract_load(Flavour::Vllm, VLLM_OLD, Instant::now());
    assert_eq!(l.kv_usage, Some(0.75));
    assert_eq!(l.running, Some(1.0));
    assert_eq!(l.waiting, None, "absent means unknown, not 0");
}

#[test]
fn trtllm_series() {
    let l = extract_load(Flavour::Trtllm, TRTLLM, Instant::now());
    assert_eq!(
        (l.waiting, l.running, l.kv_usage),
        (Some(7.0), Some(16.0), Some(0.875))
    );
    // The wrong flavour finds nothing rather than guessing.
    assert!(extract_load(Flavour::Vllm, TRTLLM, Instant::now()).is_empty());
}

#[test]
fn triton_series() {
    let l = extract_load(Flavour::TritonOpenai, TRITON, Instant::now());
    assert_eq!(
        (l.waiting, l.running, l.kv_usage),
        (Some(2.0), Some(5.0), Some(0.3125))
    );
    // Without the TRT-LLM request metrics the pending count is the queue.
    let only_pending: String = TRITON
        .lines()
        .filter(|l| !l.contains("nv_trt_llm_request_metrics"))
        .collect::<Vec<_>>()
        .join("\n");
    let l = extract_load(Flavour::TritonOpenai, &only_pending, Instant::now());
    assert_eq!(l.waiting, Some(18.0));
    assert_eq!(l.running, None);
}

#[test]
fn triton_with_vllm_backend() {
    let l = extract_load(Flavour::TritonOpenai, VLLM, Instant::now());
    assert_eq!((l.waiting, l.running), (Some(4.0), Some(6.0)));
}

#[test]
fn parses_the_format_corners() {
    let m = parse_line(r#"a_b:c{x="q\"uo\\te\n",y="}#, "} 1.5e+03 1700000000000"#);
    let m = m.expect("parses");
    assert_eq!(m.name, "a_b:c");
    assert_eq!(m.label("x"), Some("q\"uo\\te\n"));
    assert_eq!(m.label("y"), Some("}#, "));
    assert_eq!(m.value, 1500.0);
    assert!(parse_line("x NaN").is_some_and(|m| m.value.is_nan()));
    assert_eq!(parse_line("x +Inf").map(|m| m.value), Some(f64::INFINITY));
    assert_eq!(
        parse_line("x -Inf").map(|m| m.value),
        Some(f64::NEG_INFINITY)
    );
    assert_eq!(parse_line("x{} 1").map(|m| m.value), Some(1.0));
    assert_eq!(parse_line("x{a=\"b\",} 2").map(|m| m.value), Some(2.0));
    assert_eq!(
        parse_line("  x 3 # {trace=\"1\"} 1").map(|m| m.value),
        Some(3.0)
    );
    assert_eq!(parse_line("x 1.0\r").map(|m| m.value), Some(1.0));
    for bad in [
        "# TYPE x gauge",
        "",
        "x",
        "x{a=\"b\" 1",
        "x{a=b} 1",
        "x{a=\"b\"}1",
        "x inf",
        "x 1 notatime",
        "1x 2",
        "x{a=\"unterminated} 1",
    ] {
        assert_eq!(parse_line(bad), None, "{bad:?}");
    }
}

#[test]
fn nan_and_negative_values_are_ignored() {
    let text = "vllm:num_requests_waiting{engine=\"0\"} NaN\nvllm:num_requests_running -1\n";
    let l = extract_load(Flavour::Vllm, text, Instant::now());
    assert!(l.is_empty());
}

#[test]
fn samples_iterates_good_lines() {
    let names: Vec<_> = samples(VLLM).map(|m| m.name).collect();
    assert_eq!(names.len(), 11);
}

proptest! {
    #[test]
    fn never_panics_on_garbage(text in "\\PC*") {
        let _ = extract_load(Flavour::Vllm, &text, Instant::now());
        let _ = samples(&text).count();
    }

    #[test]
    fn never_panics_on_near_miss_lines(
        lines in proptest::collection::vec(
            "(vllm:|nv_|trtllm_)?[a-z_:{}=\",\\\\ ]{0,30}(\"|\\}|[0-9.eE+-]{0,8}|NaN|\\+Inf)? ?[0-9]{0,4}",
            0..20,
        )
    ) {
        let text = lines.join("\n");
        for f in [Flavour::Vllm, Flavour::Trtllm, Flavour::TritonOpenai] {
            let l = extract_load(f, &text, Instant::now());
            for v in [l.waiting, l.running, l.kv_usage].into_iter().flatten() {
                prop_assert!(v.is_finite() && v >= 0.0);
            }
        }
    }
}
