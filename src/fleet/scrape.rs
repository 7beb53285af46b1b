//! Prometheus text exposition parsing, just enough to read the load signals of vLLM,
//! trtllm-serve and Triton (UPSTREAMS §5). Never panics on any input and does linear work
//! over at most [`MAX_SCRAPE_BYTES`]; malformed lines are skipped, not fatal, because one odd
//! series must not blind the balancer to the rest.

use std::borrow::Cow;
use std::time::Instant;

use super::Flavour;

use super::replica::LoadSample;

/// Text past this is ignored (a vLLM scrape with histograms is ~100 KiB). The fetcher should
/// cap the body at the same size.
pub const MAX_SCRAPE_BYTES: usize = 4 << 20;
/// Lines with more labels than this are skipped.
const MAX_LABELS: usize = 32;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
}

impl MetricSample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Every well-formed sample line of `text` (comments, blank and malformed lines skipped).
pub fn samples(text: &str) -> impl Iterator<Item = MetricSample<'_>> {
    truncate(text).lines().filter_map(parse_line)
}

fn truncate(text: &str) -> &str {
    if text.len() <= MAX_SCRAPE_BYTES {
        return text;
    }
    // Cut on a char boundary (at most 3 steps back).
    let mut end = MAX_SCRAPE_BYTES;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Parse one line: `name{label="value",...} value [timestamp]`.
pub fn parse_line(line: &str) -> Option<MetricSample<'_>> {
    let line = line.trim_start_matches([' ', '\t']);
    let bytes = line.as_bytes();
    if bytes.first().is_none_or(|&c| !is_name_start(c)) {
        return None; // comment (`#`), blank or garbage
    }
    let name_end = bytes
        .iter()
        .position(|&c| !is_name_char(c))
        .unwrap_or(bytes.len());
    let name = line.get(..name_end)?;
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // The value must be separated from what precedes it.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional timestamp (ignored; OpenMetrics exemplars start with `#`).
    match fields.next() {
        None => {}
        Some(t) if t.starts_with('#') => {}
        Some(t) => {
            t.parse::<f64>().ok()?;
        }
    }
    Some(MetricSample {
        name,
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` (the part after `{`) and returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, out: &mut Vec<(&'a str, Cow<'a, str>)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        if out.len() >= MAX_LABELS {
            return None;
        }
        let b = s.as_bytes();
        if b.first()
            .is_none_or(|&c| !(c.is_ascii_alphabetic() || c == b'_'))
        {
            return None;
        }
        let end = b
            .iter()
            .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
            .unwrap_or(b.len());
        let key = s.get(..end)?;
        s = s.get(end..)?.trim_start().strip_prefix('=')?.trim_start();
        s = s.strip_prefix('"')?;
        let (value, rest) = parse_quoted(s)?;
        out.push((key, value));
        s = rest.trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

/// Reads a label value up to its closing quote, undoing `\\`, `\"` and `\n`.
fn parse_quoted(s: &str) -> Option<(Cow<'_, str>, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    let mut run_start = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let tail = s.get(run_start..i)?;
                let value = match owned {
                    Some(mut o) => {
                        o.push_str(tail);
                        Cow::Owned(o)
                    }
                    None => Cow::Borrowed(tail),
                };
                return Some((value, s.get(i + 1..)?));
            }
            b'\\' => {
                let o = owned.get_or_insert_with(String::new);
                o.push_str(s.get(run_start..i)?);
                match b.get(i + 1)? {
                    b'n' => o.push('\n'),
                    b'\\' => o.push('\\'),
                    b'"' => o.push('"'),
                    // Unknown escapes are kept as written, like the reference parser.
                    _ => o.push('\\'),
                }
                i += if matches!(b.get(i + 1), Some(b'n' | b'\\' | b'"')) {
                    2
                } else {
                    1
                };
                run_start = i;
            }
            _ => i += 1,
        }
    }
    None // unterminated
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust would also take "inf"/"infinity"/"nan" in any case; the format does not.
        _ if s
            .bytes()
            .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// Which series carries one signal, optionally restricted to one label value.
#[derive(Debug, Clone, Copy)]
struct Series {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
}

const fn s(name: &'static str) -> Series {
    Series { name, label: None }
}

const fn sl(name: &'static str, key: &'static str, value: &'static str) -> Series {
    Series {
        name,
        label: Some((key, value)),
    }
}

/// Candidate series per signal, best first; the first one present wins.
struct Recipe {
    waiting: &'static [Series],
    running: &'static [Series],
    kv: &'static [Series],
}

const VLLM_WAITING: Series = s("vllm:num_requests_waiting");
const VLLM_RUNNING: Series = s("vllm:num_requests_running");
// Renamed in vLLM 0.9.2; the old name was removed in 0.12.
const VLLM_KV: [Series; 2] = [
    s("vllm:kv_cache_usage_perc"),
    s("vllm:gpu_cache_usage_perc"),
];
const TRTLLM_WAITING: Series = s("trtllm_num_requests_waiting");
const TRTLLM_RUNNING: Series = s("trtllm_num_requests_running");
const TRTLLM_KV: Series = s("trtllm_kv_cache_utilization");
const TRITON_WAITING: Series = sl("nv_trt_llm_request_metrics", "request_type", "waiting");
const TRITON_RUNNING: Series = sl("nv_trt_llm_request_metrics", "request_type", "active");
const TRITON_KV: Series = sl(
    "nv_trt_llm_kv_cache_block_metrics",
    "kv_cache_block_type",
    "fraction",
);
// Triton's own scheduler queue; a fallback only, because with an ensemble every model of the
// pipeline reports it and summing them would count one request several times.
const TRITON_PENDING: Series = s("nv_inference_pending_request_count");

fn recipe(flavour: Flavour) -> Recipe {
    match flavour {
        Flavour::Vllm => Recipe {
            waiting: &[VLLM_WAITING],
            running: &[VLLM_RUNNING],
            kv: &VLLM_KV,
        },
        Flavour::Trtllm => Recipe {
            waiting: &[TRTLLM_WAITING],
            running: &[TRTLLM_RUNNING],
            kv: &[TRTLLM_KV],
        },
        // The OpenAI frontend fronts Triton with the TensorRT-LLM backend or with the vLLM
        // backend, which exports vLLM's own series.
        Flavour::TritonOpenai => Recipe {
            waiting: &[TRITON_WAITING, TRITON_PENDING, VLLM_WAITING],
            running: &[TRITON_RUNNING, VLLM_RUNNING],
            kv: &[TRITON_KV, VLLM_KV[0], VLLM_KV[1]],
        },
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    sum: f64,
    count: u32,
}

impl Acc {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.count = self.count.saturating_add(1);
    }
}

fn feed(series: &[Series], accs: &mut [Acc], m: &MetricSample<'_>) {
    for (sr, acc) in series.iter().zip(accs.iter_mut()) {
        if sr.name != m.name {
            continue;
        }
        if let Some((k, v)) = sr.label {
            if m.label(k) != Some(v) {
                continue;
            }
        }
        acc.add(m.value);
    }
}

fn first_present(accs: &[Acc], mean: bool) -> Option<f64> {
    let a = accs.iter().find(|a| a.count > 0)?;
    let v = if mean {
        a.sum / f64::from(a.count)
    } else {
        a.sum
    };
    v.is_finite().then_some(v)
}

/// Read the load signals of a flavour from exposition text.
///
/// Counts (`waiting`, `running`) are summed over every series of the metric, i.e. over
/// vLLM's `engine` (data-parallel rank) and `model_name` labels. KV use is averaged instead:
/// it is a fraction per engine, and vLLM's front end spreads requests over its engines, so the
/// mean is what a new request sees. Values that are not finite or are negative are ignored
/// (treated as absent); an absent series is unknown, never 0.
pub fn extract_load(flavour: Flavour, text: &str, at: Instant) -> LoadSample {
    let recipe = recipe(flavour);
    // One accumulator per candidate series, in recipe order.
    let mut waiting = vec![Acc::default(); recipe.waiting.len()];
    let mut running = vec![Acc::default(); recipe.running.len()];
    let mut kv = vec![Acc::default(); recipe.kv.len()];
    for line in truncate(text).lines() {
        // Cheap pre-filter before the full parse: most lines of a scrape are histograms we
        // never read.
        let l = line.trim_start_matches([' ', '\t']);
        if !(l.starts_with("vllm:") || l.starts_with("trtllm_") || l.starts_with("nv_")) {
            continue;
        }
        let Some(m) = parse_line(l) else { continue };
        if !m.value.is_finite() || m.value < 0.0 {
            continue;
        }
        feed(recipe.waiting, &mut waiting, &m);
        feed(recipe.running, &mut running, &m);
        feed(recipe.kv, &mut kv, &m);
    }
    LoadSample {
        waiting: first_present(&waiting, false),
        running: first_present(&running, false),
        kv_usage: first_present(&kv, true).map(|v| v.clamp(0.0, 1.0)),
        at,
    }
}

#[cfg(test)]
mod tests {
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
}
