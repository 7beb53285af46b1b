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
//!
//! Before scoring, candidates whose estimated time to first token is clearly worse than the
//! best one's are dropped (`within_time`): a cached prefix saves only the prefill, so it
//! must not buy a slow replica a long line.

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
    /// Expected seconds before a request sent now gets a batch slot (see [`expected_wait`]);
    /// `None` without a fresh sample or before the replica's first finished stream.
    pub wait: Option<f64>,
}

/// Seconds until a request sent now gets a batch slot, when `occupancy` requests are on the
/// replica already (running and waiting), it runs `slots` at once and each holds its slot for
/// `decode_s` after its prefill: slots free up at `slots / decode_s` per second, and
/// `occupancy + 1 − slots` of them must free up first.
pub fn expected_wait(occupancy: f64, slots: f64, decode_s: f64) -> f64 {
    let slots = slots.max(1.0);
    (occupancy + 1.0 - slots).max(0.0) * decode_s / slots
}

/// Signals of `r` at `now`: a fresh scrape corrected by our in-flight delta, else our counts.
pub fn scored_signals(settings: &BalanceSettings, r: &ReplicaState, now: Instant) -> Signals {
    let in_flight = r.in_flight() as f64;
    let Some(load) = r.fresh_load(now, settings.stale_after) else {
        return Signals {
            queue: in_flight,
            kv: None,
            wait: line_wait(r),
        };
    };
    let s = load.sample;
    let delta = in_flight - load.in_flight_at_sample as f64;
    let waiting = s.waiting.unwrap_or(0.0);
    let running = s.running.unwrap_or(in_flight - waiting);
    let occupancy = (running + waiting + delta).max(0.0);
    // With the replica's batch size known (see `ReplicaState::slots`), what we sent since
    // the scrape queues beyond it. Otherwise: a replica that was queueing queues what we
    // sent since; one that was not has free slots (how many is unknown: the bounded load
    // limits bursts meanwhile).
    let slots = r.slots();
    let queue = match slots {
        Some(slots) => (occupancy - slots).max(0.0),
        None if waiting > 0.0 => (waiting + delta).max(0.0),
        None => 0.0,
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
    let slot_wait = r.decode_ms().map(|ms| match slots {
        Some(slots) => expected_wait(occupancy, slots, ms / 1000.0),
        None if queue > 0.0 => expected_wait(running + queue, running, ms / 1000.0),
        None => 0.0,
    });
    let wait = match (slot_wait, line_wait(r)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Signals { queue, kv, wait }
}

/// Seconds until a request sent to `r` now would get its first token, from what the proxy
/// sees: our requests there still awaiting theirs, plus this one, times the replica's
/// measured time per request in line. It sees every line, also one the metrics do not show
/// (requests counted running while they wait for a busy prefill).
fn line_wait(r: &ReplicaState) -> Option<f64> {
    let per = r.first_token_per_request_s()?;
    Some((r.awaiting_first_token() as f64 + 1.0) * per)
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

/// The weighted score of every candidate, in `c`'s order (`signals` likewise).
pub fn scores(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
    signals: &[Signals],
    ctx: &SelectCtx<'_>,
) -> Vec<f64> {
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
        .zip(signals)
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

/// Estimated seconds to the first token: the wait for a slot plus the prefill of what the
/// replica's cache lacks, `uncached_tokens / prefill_tokens_per_s × slowdown`.
pub fn estimated_ttft(
    wait_s: f64,
    uncached_tokens: f64,
    prefill_tokens_per_s: f64,
    slowdown: f64,
) -> f64 {
    wait_s + uncached_tokens / prefill_tokens_per_s.max(1.0) * slowdown.max(1.0)
}

/// A replica that likely holds most of the prompt stays a candidate while its estimated time
/// to first token is within this factor of the best one's (plus one full prefill): waits
/// are estimates, and sending a prefix away from its cache costs more than its own prefill
/// (it evicts, and delays the prefills behind it), so only a clearly worse one is dropped
/// (like SGLang's router, which leaves cache affinity only beyond a relative imbalance).
/// One that would miss must be within one full prefill of the best.
const TTFT_SLACK: f64 = 2.0;

/// Prompt tokens per hashed block (64 bytes at ~4 bytes per token).
const TOKENS_PER_BLOCK: f64 = 16.0;

/// The candidates (`fit`, with their `signals`) whose estimated time to first token is at
/// most the best one's plus one full prefill of this prompt at full speed; never empty.
/// A replica's slowdown is its decode time over the fastest candidate's (a replica that
/// decodes 4× slower prefills about 4× slower too). Candidates without a wait estimate
/// (stale sample, no finished stream yet) are kept: nothing is known against them.
fn within_time(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    fit: &[usize],
    signals: &[Signals],
    ctx: &SelectCtx<'_>,
) -> Vec<usize> {
    let blocks = ctx.prefix_blocks;
    let fastest = fit
        .iter()
        .filter_map(|&i| replicas[i].decode_ms())
        .fold(f64::INFINITY, f64::min);
    let rate = settings.prefill_tokens_per_s;
    let full = blocks.len() as f64 * TOKENS_PER_BLOCK;
    // (estimated TTFT, whether most of the prompt is likely cached there)
    let ttft: Vec<Option<(f64, bool)>> = fit
        .iter()
        .zip(signals)
        .map(|(&i, s)| {
            let wait = s.wait?;
            let r = &replicas[i];
            let slowdown = r.decode_ms().map_or(1.0, |d| d / fastest);
            let matched = r.prefix_matched(blocks);
            let missed = blocks.len().saturating_sub(matched);
            let t = estimated_ttft(wait, missed as f64 * TOKENS_PER_BLOCK, rate, slowdown);
            Some((t, 2 * matched >= blocks.len().max(1)))
        })
        .collect();
    let Some(best) = ttft.iter().flatten().map(|t| t.0).reduce(f64::min) else {
        return fit.to_vec();
    };
    let prefill = estimated_ttft(0.0, full, rate, 1.0);
    let keeps = |&(t, cached): &(f64, bool)| {
        let slack = if cached { TTFT_SLACK } else { 1.0 };
        t <= slack * best + prefill + 1e-9
    };
    fit.iter()
        .zip(&ttft)
        .filter(|(_, t)| t.as_ref().is_none_or(keeps))
        .map(|(&i, _)| i)
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
    let signals: Vec<Signals> = fit
        .iter()
        .map(|&i| scored_signals(settings, &replicas[i], ctx.now))
        .collect();
    let in_time = within_time(settings, replicas, &fit, &signals, ctx);
    let (fit, signals): (Vec<usize>, Vec<Signals>) = fit
        .iter()
        .zip(&signals)
        .filter(|(i, _)| in_time.contains(i))
        .map(|(&i, &s)| (i, s))
        .unzip();
    let scores = scores(settings, replicas, &fit, &signals, ctx);
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::fleet::health::HealthRules;
    use crate::fleet::replica::LoadSample;

    #[test]
    fn wait_counts_the_slots_that_must_free_up() {
        assert_eq!(expected_wait(3.0, 8.0, 2.0), 0.0, "free slots");
        assert_eq!(expected_wait(7.0, 8.0, 2.0), 0.0, "the last free slot");
        assert_eq!(expected_wait(8.0, 8.0, 2.0), 0.25, "one must finish");
        assert_eq!(expected_wait(11.0, 8.0, 2.0), 1.0);
        assert_eq!(expected_wait(4.0, 0.0, 1.0), 4.0, "at least one slot");
        assert_eq!(estimated_ttft(1.0, 2000.0, 10_000.0, 4.0), 1.8);
        assert_eq!(
            estimated_ttft(1.0, 2000.0, 10_000.0, 0.5),
            1.2,
            "never faster"
        );
    }

    fn replica(i: u8) -> Arc<ReplicaState> {
        let rules = HealthRules {
            active_checks: false,
            ..HealthRules::default()
        };
        let addr = SocketAddr::from(([10, 0, 0, i], 8000));
        Arc::new(ReplicaState::new("c", addr, rules))
    }

    /// Two replicas with a queue each, the second decoding 4× slower and holding the prompt.
    #[test]
    fn a_slow_replica_with_the_prefix_is_dropped_when_its_wait_is_far_longer() {
        let now = Instant::now();
        let rs = [replica(1), replica(2)];
        let blocks = crate::fleet::prefix::block_hashes(&[b's'; 8192]);
        rs[1].remember_prefix(&blocks);
        let queued = |waiting: f64| LoadSample {
            waiting: Some(waiting),
            running: Some(8.0),
            kv_usage: Some(0.9),
            at: now,
        };
        rs[0].record_decode(Duration::from_millis(500));
        rs[1].record_decode(Duration::from_millis(2000));
        let settings = BalanceSettings {
            policy: crate::fleet::Policy::Scored,
            ..BalanceSettings::default()
        };
        let ctx = SelectCtx {
            prefix_blocks: &blocks,
            ..SelectCtx::new(now, 0)
        };
        // Equal queues of 2: 0.19 s on the fast one + a 0.2 s prefill (2048 tokens), against
        // 0.75 s on the slow one, within 2 × 0.39 + 0.2: kept, and its cached prefix wins.
        rs[0].set_load(queued(2.0));
        rs[1].set_load(queued(2.0));
        assert_eq!(choose(&settings, &rs, &[0, 1], &ctx), 1);
        // The slow one's queue of 8: 2.25 s, far beyond: the fast one, despite the miss.
        rs[1].set_load(queued(8.0));
        assert_eq!(choose(&settings, &rs, &[0, 1], &ctx), 0);
        // Without decode times (no stream finished yet) nothing is known against it.
        let fresh = [replica(3), replica(4)];
        fresh[1].remember_prefix(&blocks);
        fresh[0].set_load(queued(2.0));
        fresh[1].set_load(queued(8.0));
        assert_eq!(choose(&settings, &fresh, &[0, 1], &ctx), 1);
    }

    #[test]
    fn our_line_of_requests_awaiting_a_first_token_counts_as_wait() {
        let now = Instant::now();
        let rs = [replica(1), replica(2)];
        let settings = BalanceSettings::default();
        // 0.5 s per request in line on replica 0, measured; three more wait there now.
        let mut first = rs[0].begin();
        first.first_token(Instant::now() + Duration::from_millis(500));
        let _line: Vec<_> = (0..3).map(|_| rs[0].begin()).collect();
        let wait = scored_signals(&settings, &rs[0], now).wait.unwrap_or(0.0);
        assert!((wait - 2.0).abs() < 0.05, "{wait}");
        assert_eq!(scored_signals(&settings, &rs[1], now).wait, None);
    }
}
