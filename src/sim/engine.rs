//! The `batching` engine: a model of one vLLM replica's scheduler, good enough for routing
//! experiments.
//!
//! - Continuous batching: at most `max_num_seqs` requests run at once; the rest wait in a
//!   FIFO queue (tokio's semaphore is fair), exported as `num_requests_waiting`.
//! - Prefix cache: the prompt text is cut into blocks of [`BLOCK_BYTES`] bytes (≈ 16 tokens,
//!   vLLM's block size) whose hashes chain, so a block hits only when everything before it
//!   matched too; a bounded LRU of block hashes per replica. Hits and queries are counted in
//!   tokens, like `vllm:prefix_cache_{hits,queries}_total`.
//! - Prefill: one prefill at a time (prefill is compute-bound: two at once each take twice as
//!   long), lasting `uncached tokens / prefill rate`.
//! - Decode: each token step takes `decode_ms × (1 + decode_growth × (running − 1))`, read
//!   at every step, so a full batch slows everyone in it.
//! - `speed` divides every duration (0.25 = a replica at a quarter of the speed).
//! - KV-cache use: blocks held by running requests over the cache's capacity, capped at 1;
//!   a prompt block shared by several running requests counts once (vLLM shares them), the
//!   partial tail and the requested output count per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of prompt text per cache block: vLLM's 16-token block at ~4 bytes per token.
pub const BLOCK_BYTES: usize = 64;
/// Tokens per block, and bytes per token of the prefill estimate.
pub const BLOCK_TOKENS: u64 = 16;
const BYTES_PER_TOKEN: u64 = 4;
/// At most this many blocks of a prompt are hashed and charged for (64 KiB of text, 16 K
/// tokens): the simulator accepts bodies far beyond any context window (proxy tests send
/// 16 MiB), and charging them in full would stall it for minutes. Bounds the per-request
/// work and memory too.
pub const MAX_PROMPT_BLOCKS: usize = 1024;

/// The engine's knobs (see `SimConfig` for the flags and their grounding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub max_num_seqs: u64,
    pub prefill_tokens_per_s: f64,
    pub decode_ms: f64,
    pub decode_growth: f64,
    pub cache_blocks: usize,
    pub speed: f64,
}

/// What one request asks of the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    /// Chained hashes of the prompt's full blocks (see [`prompt_blocks`]).
    pub blocks: Vec<u64>,
    /// Prompt length in tokens (text bytes / 4, at least 1).
    pub prompt_tokens: u64,
    /// Output tokens the request may produce, for the KV estimate.
    pub max_output_tokens: u64,
}

impl Job {
    pub fn from_prompt(text: &[u8], max_output_tokens: u64) -> Job {
        Job {
            blocks: prompt_blocks(text),
            prompt_tokens: (text.len().min(MAX_PROMPT_BLOCKS * BLOCK_BYTES) as u64)
                .div_ceil(BYTES_PER_TOKEN)
                .max(1),
            max_output_tokens,
        }
    }

    /// KV blocks this request holds besides its shareable full prompt blocks: the partial
    /// tail and the output.
    fn private_blocks(&self) -> u64 {
        let prompt = self.prompt_tokens.div_ceil(BLOCK_TOKENS);
        prompt.saturating_sub(self.blocks.len() as u64)
            + self.max_output_tokens.div_ceil(BLOCK_TOKENS)
    }
}

/// FNV-1a of `bytes` continued from `seed`.
fn fnv1a_from(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Chained hashes of the full [`BLOCK_BYTES`] blocks of `text` (a trailing partial block is
/// never cached, as in vLLM), at most [`MAX_PROMPT_BLOCKS`].
pub fn prompt_blocks(text: &[u8]) -> Vec<u64> {
    let mut parent = 0xcbf2_9ce4_8422_2325;
    text.chunks_exact(BLOCK_BYTES)
        .take(MAX_PROMPT_BLOCKS)
        .map(|block| {
            parent = fnv1a_from(parent, block);
            parent
        })
        .collect()
}

/// A bounded LRU set of block hashes.
#[derive(Debug, Default)]
pub struct BlockLru {
    capacity: usize,
    tick: u64,
    by_hash: HashMap<u64, u64>,
    by_tick: BTreeMap<u64, u64>,
}

impl BlockLru {
    pub fn new(capacity: usize) -> BlockLru {
        BlockLru {
            capacity,
            ..BlockLru::default()
        }
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// How many leading blocks are cached; then every block becomes most recently used
    /// (the prefill just computed the missing ones).
    pub fn lookup_and_insert(&mut self, blocks: &[u64]) -> usize {
        let hits = blocks
            .iter()
            .take_while(|b| self.by_hash.contains_key(b))
            .count();
        for &b in blocks {
            self.touch(b);
        }
        hits
    }

    fn touch(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.by_hash.insert(hash, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, hash);
        while self.by_hash.len() > self.capacity {
            let Some((_, evicted)) = self.by_tick.pop_first() else {
                break;
            };
            self.by_hash.remove(&evicted);
        }
    }
}

/// Gauges and counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub running: u64,
    pub waiting: u64,
    pub kv_usage: f64,
    pub prefix_hits_tokens: u64,
    pub prefix_queries_tokens: u64,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: u64,
    running: u64,
    /// Full prompt blocks of running requests, with how many hold each.
    pinned: HashMap<u64, u32>,
    private_blocks: u64,
    cache: BlockLru,
    hits: u64,
    queries: u64,
}

/// One replica's engine, shared by its connections.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    slots: Arc<Semaphore>,
    prefill: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Arc<Engine> {
        let slots = usize::try_from(config.max_num_seqs.max(1)).unwrap_or(usize::MAX);
        Arc::new(Engine {
            config,
            slots: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
            prefill: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                cache: BlockLru::new(config.cache_blocks),
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> EngineStats {
        let inner = self.lock();
        let capacity = self.config.cache_blocks.max(1) as f64;
        EngineStats {
            running: inner.running,
            waiting: inner.waiting,
            kv_usage: ((inner.pinned.len() as u64 + inner.private_blocks) as f64 / capacity)
                .min(1.0),
            prefix_hits_tokens: inner.hits,
            prefix_queries_tokens: inner.queries,
        }
    }

    fn scaled(&self, ms: f64) -> Duration {
        let speed = if self.config.speed > 0.0 {
            self.config.speed
        } else {
            1.0
        };
        Duration::from_secs_f64((ms / speed / 1000.0).clamp(0.0, 3600.0))
    }

    /// Waits for a batch slot (FIFO), then prefills: returns when the first token is due.
    /// Cancel-safe: dropping the future leaves the queue or frees the slot.
    pub async fn start(self: &Arc<Self>, job: Job) -> Running {
        self.lock().waiting += 1;
        let waiting = Waiting(Arc::clone(self));
        let permit = Arc::clone(&self.slots).acquire_owned().await.ok();
        drop(waiting);
        let private = job.private_blocks();
        {
            let mut inner = self.lock();
            inner.running += 1;
            inner.private_blocks += private;
            for &b in &job.blocks {
                *inner.pinned.entry(b).or_insert(0) += 1;
            }
        }
        let running = Running {
            engine: Arc::clone(self),
            _permit: permit,
            private,
            blocks: job.blocks.clone(),
        };
        let _prefilling = self.prefill.lock().await;
        let uncached = {
            let mut inner = self.lock();
            let hit_blocks = inner.cache.lookup_and_insert(&job.blocks) as u64;
            let hit_tokens = (hit_blocks * BLOCK_TOKENS).min(job.prompt_tokens);
            inner.hits += hit_tokens;
            inner.queries += job.prompt_tokens;
            job.prompt_tokens - hit_tokens
        };
        let rate = self.config.prefill_tokens_per_s.max(1.0);
        tokio::time::sleep(self.scaled(uncached as f64 * 1000.0 / rate)).await;
        running
    }

    /// The duration of one decode step at the current batch size.
    pub fn decode_step(&self) -> Duration {
        let running = self.lock().running.max(1);
        let growth = 1.0 + self.config.decode_growth * (running - 1) as f64;
        self.scaled(self.config.decode_ms * growth)
    }
}

/// Counts a request as waiting until dropped.
struct Waiting(Arc<Engine>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.waiting = inner.waiting.saturating_sub(1);
    }
}

/// A request in the running batch; dropping it frees its slot and KV blocks.
#[derive(Debug)]
pub struct Running {
    engine: Arc<Engine>,
    _permit: Option<OwnedSemaphorePermit>,
    private: u64,
    blocks: Vec<u64>,
}

impl Running {
    pub fn decode_step(&self) -> Duration {
        self.engine.decode_step()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut inner = self.engine.lock();
        inner.running = inner.running.saturating_sub(1);
        inner.private_blocks = inner.private_blocks.saturating_sub(self.private);
        for b in &self.blocks {
            if let Some(count) = inner.pinned.get_mut(b) {
                *count -= 1;
                if *count == 0 {
                    inner.pinned.remove(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EngineConfig {
        EngineConfig {
            max_num_seqs: 2,
            prefill_tokens_per_s: 1000.0,
            decode_ms: 10.0,
            decode_growth: 0.5,
            cache_blocks: 100,
            speed: 1.0,
        }
    }

    #[test]
    fn blocks_chain_and_skip_the_partial_tail() {
        let a = prompt_blocks(&[b'a'; 200]);
        assert_eq!(a.len(), 3);
        let mut text = vec![b'a'; 128];
        text.extend_from_slice(&[b'b'; 64]);
        let b = prompt_blocks(&text);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // A block equal in content but after a different prefix hashes differently.
        let mut c = vec![b'c'; 64];
        c.extend_from_slice(&[b'a'; 64]);
        assert_ne!(prompt_blocks(&c)[1], a[0]);
    }

    #[test]
    fn lru_counts_leading_hits_and_evicts_the_oldest() {
        let mut lru = BlockLru::new(3);
        assert_eq!(lru.lookup_and_insert(&[1, 2]), 0);
        assert_eq!(lru.lookup_and_insert(&[1, 2, 3]), 2);
        assert_eq!(lru.lookup_and_insert(&[9, 1]), 0, "a miss stops the match");
        assert_eq!(lru.len(), 3);
        // 2 was least recently used and is gone; 1 survives.
        assert_eq!(lru.lookup_and_insert(&[1]), 1);
        assert_eq!(lru.lookup_and_insert(&[1, 2]), 1);
        assert!(BlockLru::new(0).lookup_and_insert(&[1]) == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queues_beyond_max_num_seqs_and_counts_cache_hits() {
        let engine = Engine::new(config());
        let job = Job::from_prompt(&[b'x'; 640], 16);
        assert_eq!(job.prompt_tokens, 160);
        let first = engine.start(job.clone()).await;
        let second = engine.start(job.clone()).await;
        let stats = engine.stats();
        assert_eq!((stats.running, stats.waiting), (2, 0));
        // 10 shared prompt blocks once, one output block each, of 100.
        assert_eq!(stats.kv_usage, 0.12);
        assert_eq!(stats.prefix_queries_tokens, 320);
        assert_eq!(stats.prefix_hits_tokens, 160);
        let third = tokio::spawn({
            let engine = Arc::clone(&engine);
            let job = job.clone();
            async move { engine.start(job).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(engine.stats().waiting, 1);
        assert_eq!(first.decode_step(), Duration::from_millis(15));
        drop(first);
        let third = third.await.unwrap();
        assert_eq!(engine.stats().waiting, 0);
        assert_eq!(engine.stats().running, 2);
        drop((second, third));
        assert_eq!(engine.stats().kv_usage, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn prefill_time_follows_uncached_tokens_and_speed() {
        let engine = Engine::new(EngineConfig {
            speed: 0.5,
            ..config()
        });
        assert_eq!(Job::from_prompt(&[b'z'; 1 << 20], 1).prompt_tokens, 16_384);
        let job = Job::from_prompt(&[b'y'; 4000], 1);
        let t0 = tokio::time::Instant::now();
        drop(engine.start(job.clone()).await);
        // 1000 tokens at 1000/s, half speed: 2 s.
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        let t1 = tokio::time::Instant::now();
        drop(engine.start(job).await);
        // 62 blocks (992 tokens) hit: 8 tokens left.
        assert_eq!(t1.elapsed(), Duration::from_millis(16));
    }
}
