//! The `scored` policy: llm-d's endpoint-picker scorers, in process.
//!
//! Among the candidates within the bounded load (in-flight ≤ `c × average + 1`, as for
//! prefix affinity, so one hot prefix cannot flatten its replica), each replica gets
//!
//! ```text
//! score = w_queue · queue_score + w_kv · kv_score + w_prefix · prefix_score     (higher wins)
//! queue_score  = (q_max − q) / (q_max − q_min), 1 when all are equal
//! kv_score     = 1 − kv_usage
//! prefix_score = leading prompt blocks recently sent there / prompt blocks
//! ```
//!
//! `q` is the scraped `num_requests_waiting`, corrected by the proxy's own sends and
//! completions since the scrape while the replica was queueing (see [`scored_signals`]).
//! A replica with `q > 0` counts as KV-full (`kv_usage = 1`): vLLM admits a waiting request as
//! soon as a slot and its blocks are free, so a queue means there is no room for one more. A
//! cached prefix (worth 3) therefore keeps a replica that is merely busy, but not one that
//! queues while another does not (2 + 2·free KV).
//! A replica whose sample is stale (older than the scrape staleness rule) or absent falls back
//! to the proxy's own counts: `q` = in flight, and `kv_score = 1 − in_flight / max in flight`.
//! Ties go to fewer in flight, then to whichever comes first from a random start.

use std::sync::Arc;
use std::time::Instant;

use super::super::replica::ReplicaState;
use super::super::settings::BalanceSettings;
use super::SelectCtx;

/// The load signals of one replica as the scorers see them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// Queue depth estimate (requests waiting), or the in-flight count when stale.
    pub queue: f64,
    /// KV-cache use 0..=1 from a fresh scrape, else `None`.
    pub kv: Option<f64>,
}

/// Signals of `r` at `now`: a fresh scrape corrected by our in-flight delta, else our counts.
pub fn scored_signals(settings: &BalanceSettings, r: &ReplicaState, now: Instant) -> Signals {
    let in_flight = r.in_flight() as f64;
    let Some(load) = r.fresh_load(now, settings.stale_after) else {
        return Signals {
            queue: in_flight,
            kv: None,
        };
    };
    let s = load.sample;
    let delta = in_flight - load.in_flight_at_sample as f64;
    let waiting = s.waiting.unwrap_or(0.0);
    // A replica that was queueing queues what we sent since; one that was not has free slots
    // (how many is unknown: the bounded load limits bursts meanwhile).
    let queue = if waiting > 0.0 {
        (waiting + delta).max(0.0)
    } else {
        0.0
    };
    // vLLM admits a waiting request as soon as a sequence slot and its KV blocks are free,
    // so a replica that queues has no usable KV room for one more, whatever its usage says.
    // Otherwise KV use grows with what we sent since the scrape, in proportion to the running
    // requests that held it then (so requests between scrapes do not all herd onto the
    // replica that looked emptiest).
    let kv = if queue > 0.0 {
        Some(1.0)
    } else {
        s.kv_usage.map(|k| match s.running {
            Some(running) if running > 0.0 => {
                (k * (running + delta).max(0.0) / running).clamp(0.0, 1.0)
            }
            _ => k.clamp(0.0, 1.0),
        })
    };
    Signals { queue, kv }
}

/// The candidates (non-empty) within the bounded load; never empty.
fn within_bounded_load(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
) -> Vec<usize> {
    let total: usize = c.iter().map(|&i| replicas[i].in_flight()).sum();
    let factor = settings.bounded_load_factor.max(1.0);
    let cap = factor * total as f64 / c.len() as f64 + 1.0;
    let fit: Vec<usize> = c
        .iter()
        .copied()
        .filter(|&i| replicas[i].in_flight() as f64 <= cap)
        .collect();
    if fit.is_empty() {
        c.to_vec()
    } else {
        fit
    }
}

/// The three scores of every candidate, in `c`'s order.
pub fn scores(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
    ctx: &SelectCtx<'_>,
) -> Vec<f64> {
    let signals: Vec<Signals> = c
        .iter()
        .map(|&i| scored_signals(settings, &replicas[i], ctx.now))
        .collect();
    let q_min = signals
        .iter()
        .map(|s| s.queue)
        .fold(f64::INFINITY, f64::min);
    let q_max = signals.iter().map(|s| s.queue).fold(0.0, f64::max);
    let max_in_flight = c
        .iter()
        .map(|&i| replicas[i].in_flight())
        .max()
        .unwrap_or(0);
    let blocks = ctx.prefix_blocks;
    let w = settings.weights;
    c.iter()
        .zip(&signals)
        .map(|(&i, s)| {
            let queue = if q_max - q_min > f64::EPSILON {
                (q_max - s.queue) / (q_max - q_min)
            } else {
                1.0
            };
            let kv = match s.kv {
                Some(kv) => 1.0 - kv,
                None if max_in_flight == 0 => 1.0,
                None => 1.0 - replicas[i].in_flight() as f64 / max_in_flight as f64,
            };
            let prefix = if blocks.is_empty() {
                0.0
            } else {
                replicas[i].prefix_matched(blocks) as f64 / blocks.len() as f64
            };
            w.queue * queue + w.kv * kv + w.prefix * prefix
        })
        .collect()
}

/// The best-scoring candidate of `c` (non-empty).
pub fn choose(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
    ctx: &SelectCtx<'_>,
) -> usize {
    let fit = within_bounded_load(settings, replicas, c);
    let scores = scores(settings, replicas, &fit, ctx);
    let start = (ctx.rand % fit.len() as u64) as usize;
    let mut best = start;
    for k in 1..fit.len() {
        let j = (start + k) % fit.len();
        let better = scores[j] > scores[best] + 1e-9
            || ((scores[j] - scores[best]).abs() <= 1e-9
                && replicas[fit[j]].in_flight() < replicas[fit[best]].in_flight());
        if better {
            best = j;
        }
    }
    fit[best]
}
