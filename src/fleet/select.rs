//! Replica choice within a cluster: filters out ineligible, already-tried and saturated
//! replicas, then applies the cluster's policy. Pure apart from the shared round-robin cursor;
//! randomness comes in through `SelectCtx::rand` so tests are reproducible.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::hash::{mix64, rendezvous};
use super::replica::ReplicaState;
use super::settings::{BalanceSettings, Policy};

/// Per-request inputs of a selection.
#[derive(Debug, Clone, Copy)]
pub struct SelectCtx<'a> {
    /// Indices (into the cluster's replica list) already attempted for this request.
    pub tried: &'a [usize],
    /// The replica of the previous attempt: a retry never goes back to it.
    pub last: Option<usize>,
    /// Prefix identity for `PrefixAffinity` (see `hash::prefix_key`); other policies ignore it.
    pub prefix_key: Option<u64>,
    /// Prompt block hashes for `Scored` (see `prefix::block_hashes`); others ignore them.
    pub prefix_blocks: &'a [u64],
    pub now: Instant,
    /// A fresh random value per call (`fastrand::u64(..)`); fixed in tests.
    pub rand: u64,
}

impl<'a> SelectCtx<'a> {
    /// A first attempt with no prefix.
    pub fn new(now: Instant, rand: u64) -> SelectCtx<'a> {
        SelectCtx {
            tried: &[],
            last: None,
            prefix_key: None,
            prefix_blocks: &[],
            now,
            rand,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum SelectError {
    /// The cluster lists no replicas (503).
    #[error("the cluster has no replicas")]
    NoReplicas,
    /// None is healthy and undrained (503 + Retry-After).
    #[error("none of the {total} replicas is healthy and undrained")]
    NoEligible { total: usize },
    /// Every eligible replica was already tried for this request (the proxy answers with the
    /// last attempt's error, e.g. 502).
    #[error("every eligible replica was already tried")]
    Exhausted,
    /// Every eligible replica is over the queue or in-flight limit (503 + Retry-After).
    #[error("every eligible replica is saturated; retry after {retry_after:?}")]
    Saturated { retry_after: Duration },
}

/// One cluster's selector: settings plus the round-robin cursor. Rebuilt on reload (a new
/// rotation start is harmless); the replica states it is handed survive reloads.
#[derive(Debug, Default)]
pub struct Balancer {
    pub settings: BalanceSettings,
    cursor: AtomicUsize,
}

impl Balancer {
    pub fn new(settings: BalanceSettings) -> Balancer {
        Balancer {
            settings,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Pick a replica index for this attempt. Take `replicas[i].begin()` right after, so the
    /// next selection sees the new in-flight count. Under `Scored` the chosen replica also
    /// remembers the request's prompt blocks.
    pub fn select(
        &self,
        replicas: &[Arc<ReplicaState>],
        ctx: &SelectCtx<'_>,
    ) -> Result<usize, SelectError> {
        let chosen = select(&self.settings, &self.cursor, replicas, ctx)?;
        if self.settings.policy == Policy::Scored {
            replicas[chosen].remember_prefix(ctx.prefix_blocks);
        }
        Ok(chosen)
    }
}

/// See [`Balancer::select`].
pub fn select(
    settings: &BalanceSettings,
    cursor: &AtomicUsize,
    replicas: &[Arc<ReplicaState>],
    ctx: &SelectCtx<'_>,
) -> Result<usize, SelectError> {
    if replicas.is_empty() {
        return Err(SelectError::NoReplicas);
    }
    let mut eligible = 0;
    let mut candidates = Vec::with_capacity(replicas.len());
    let mut unsaturated = Vec::with_capacity(replicas.len());
    for (i, r) in replicas.iter().enumerate() {
        if !r.is_eligible(ctx.now) {
            continue;
        }
        eligible += 1;
        if ctx.tried.contains(&i) || ctx.last == Some(i) {
            continue;
        }
        candidates.push(i);
        if !is_saturated(settings, r, ctx.now) {
            unsaturated.push(i);
        }
    }
    if eligible == 0 {
        return Err(SelectError::NoEligible {
            total: replicas.len(),
        });
    }
    if candidates.is_empty() {
        return Err(SelectError::Exhausted);
    }
    if unsaturated.is_empty() {
        return Err(SelectError::Saturated {
            retry_after: settings.retry_after,
        });
    }
    let c = &unsaturated;
    Ok(match settings.policy {
        Policy::RoundRobin => round_robin(cursor, replicas.len(), c),
        Policy::LeastOutstanding => two_choices(replicas, c, ctx.rand),
        Policy::LoadAware => least_score(settings, replicas, c, ctx),
        Policy::PrefixAffinity => match ctx.prefix_key {
            Some(key) => prefix_affinity(settings, replicas, c, key),
            // No prefix to be faithful to: balance on load instead.
            None => two_choices(replicas, c, ctx.rand),
        },
        Policy::Scored => scored::choose(settings, replicas, c, ctx),
    })
}

/// Over the queue limit (fresh scraped `waiting`) or the proxy's own in-flight limit.
pub fn is_saturated(settings: &BalanceSettings, r: &ReplicaState, now: Instant) -> bool {
    if settings.max_in_flight.is_some_and(|m| r.in_flight() >= m) {
        return true;
    }
    match settings.max_queue {
        Some(q) => r
            .fresh_load(now, settings.stale_after)
            .and_then(|l| l.sample.waiting)
            .is_some_and(|w| w >= q),
        None => false,
    }
}

/// `candidates` is sorted ascending and non-empty.
fn round_robin(cursor: &AtomicUsize, n: usize, candidates: &[usize]) -> usize {
    // The cursor walks all indices, not just candidates, so a reordering of eligibility does
    // not reset everyone's turn.
    let start = cursor.fetch_add(1, Ordering::Relaxed) % n;
    candidates
        .iter()
        .copied()
        .find(|&i| i >= start)
        .or_else(|| candidates.first().copied())
        .unwrap_or(start)
}

/// Power of two choices: two distinct random candidates, the one with fewer in flight wins,
/// then the lower latency EWMA. Random pairs (rather than the global minimum) keep concurrent
/// selections from all stampeding onto the same idle replica.
fn two_choices(replicas: &[Arc<ReplicaState>], c: &[usize], rand: u64) -> usize {
    let Some((a, b)) = random_pair(c.len(), rand) else {
        return c[0];
    };
    let (ia, ib) = (c[a], c[b]);
    let key = |i: usize| {
        let r = &replicas[i];
        (r.in_flight(), r.ewma_ms().unwrap_or(0.0))
    };
    let (ka, kb) = (key(ia), key(ib));
    if kb.0 < ka.0 || (kb.0 == ka.0 && kb.1 < ka.1) {
        ib
    } else {
        ia
    }
}

/// Two distinct positions in `0..len` from one random value; `None` when `len < 2`.
fn random_pair(len: usize, rand: u64) -> Option<(usize, usize)> {
    if len < 2 {
        return None;
    }
    let n = len as u64;
    let a = rand % n;
    let b = (a + 1 + mix64(rand) % (n - 1)) % n;
    Some((a as usize, b as usize))
}

/// How much a queued request counts against a replica, in running-request equivalents. A
/// request that has to queue waits for a whole slot to free up, which costs far more time
/// to first token than sharing a batch with more running requests; "queue depth first"
/// (UPSTREAMS §9.12).
pub const WAITING_WEIGHT: f64 = 16.0;
/// Weight of KV cache use (0..=1): a full cache means new requests soon queue or preempt.
pub const KV_WEIGHT: f64 = 16.0;

/// The load-aware score of one replica; lower is better.
///
/// With a fresh sample (`age ≤ stale_after`):
///
/// ```text
/// delta   = in_flight_now − in_flight_at_scrape   (the proxy's own sends minus completions
///                                                  since the scrape; may be negative)
/// if waiting > 0:  waiting' = max(0, waiting + delta), running' = running
/// else:            waiting' = 0,                        running' = max(0, running + delta)
/// score   = 16·waiting' + running' + 16·kv_usage + ewma_ttfb_seconds
/// ```
///
/// An absent `waiting` or `kv_usage` counts 0; an absent `running` is replaced by the
/// proxy's own in-flight count. Without a fresh sample: `score = in_flight + ewma_seconds`.
/// The delta correction matters: scrapes are seconds apart, and without it every request in
/// between would herd onto the replica that looked idlest at the last scrape. The latency
/// term is a tie-breaker (a second of TTFB weighs as much as one running request).
pub fn load_score(settings: &BalanceSettings, r: &ReplicaState, now: Instant) -> f64 {
    let in_flight = r.in_flight() as f64;
    let latency = r.ewma_ms().unwrap_or(0.0) / 1000.0;
    let Some(load) = r.fresh_load(now, settings.stale_after) else {
        return in_flight + latency;
    };
    let s = load.sample;
    let delta = in_flight - load.in_flight_at_sample as f64;
    let waiting = s.waiting.unwrap_or(0.0);
    let (waiting, running) = match s.running {
        Some(running) if waiting > 0.0 => ((waiting + delta).max(0.0), running),
        Some(running) => (0.0, (running + delta).max(0.0)),
        None if waiting > 0.0 => ((waiting + delta).max(0.0), 0.0),
        None => (0.0, in_flight),
    };
    WAITING_WEIGHT * waiting + running + KV_WEIGHT * s.kv_usage.unwrap_or(0.0) + latency
}

/// The lowest score; ties go to whichever comes first from a random starting point, so idle
/// fleets are not all sent to index 0.
fn least_score(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
    ctx: &SelectCtx<'_>,
) -> usize {
    let start = (ctx.rand % c.len() as u64) as usize;
    let mut best = c[start];
    let mut best_score = load_score(settings, &replicas[best], ctx.now);
    for k in 1..c.len() {
        let i = c[(start + k) % c.len()];
        let s = load_score(settings, &replicas[i], ctx.now);
        if s < best_score {
            best = i;
            best_score = s;
        }
    }
    best
}

/// Rendezvous hashing with bounded load: candidates in descending hash weight for `key`; the
/// first whose in-flight count does not exceed `c × average + 1` wins (consistent hashing
/// with bounded loads, Mirrokni et al.; the `+ 1` keeps a nearly idle cluster from spilling a
/// prefix over one extra request). The average is over the candidates, so at least the
/// least-loaded one always fits.
fn prefix_affinity(
    settings: &BalanceSettings,
    replicas: &[Arc<ReplicaState>],
    c: &[usize],
    key: u64,
) -> usize {
    let mut order: Vec<(u64, usize)> = c
        .iter()
        .map(|&i| (rendezvous(key, replicas[i].id_hash()), i))
        .collect();
    // Ties (astronomically unlikely) are broken by index to stay deterministic.
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let total: usize = c.iter().map(|&i| replicas[i].in_flight()).sum();
    let factor = settings.bounded_load_factor.max(1.0);
    let cap = factor * total as f64 / c.len() as f64 + 1.0;
    order
        .iter()
        .map(|&(_, i)| i)
        .find(|&i| replicas[i].in_flight() as f64 <= cap)
        .unwrap_or_else(|| {
            // Only reachable with racing counters; fall back to the least loaded.
            c.iter()
                .copied()
                .min_by_key(|&i| replicas[i].in_flight())
                .unwrap_or(c[0])
        })
}

pub mod scored;

#[cfg(test)]
mod tests;
