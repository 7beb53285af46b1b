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
mod tests;
