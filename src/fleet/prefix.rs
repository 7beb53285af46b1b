//! An approximate, bounded index of the prompt prefixes each replica has recently been sent,
//! for the `scored` policy's prefix-cache estimate (no tokenizer needed).
//!
//! The prompt text is cut into [`BLOCK_BYTES`]-byte blocks (≈ 16 tokens, vLLM's KV block)
//! whose hashes chain: block `k`'s hash covers blocks `0..=k`, so "the first `n` blocks are in
//! the index" means "a request with this same first `n × 64` bytes went there". Engines cache
//! whole blocks of a shared prefix the same way, so the estimate follows what their cache
//! holds, as long as the index forgets at about the rate the engine evicts.
//!
//! The per-replica index is two generations of hash sets: inserts go to the current one;
//! when it holds half the capacity it becomes the previous one and the older is dropped.
//! Lookups check both. Memory is bounded by the capacity, inserts and lookups are O(1), and a
//! block used in either of the last two generations counts as cached (a cheap LRU).

use std::collections::HashSet;

use super::hash::mix64;

/// Bytes of prompt text per block: a 16-token KV block at ~4 bytes per token.
pub const BLOCK_BYTES: usize = 64;
/// Blocks hashed per request at most (16 KiB of prompt text): a system prompt and the first
/// turns fit, and the per-request work and memory stay bounded whatever the body's size.
pub const MAX_BLOCKS: usize = 256;
/// Block hashes remembered per replica (both generations together): 4096 blocks ≈ 64 K
/// tokens of distinct prefixes, ~100 KiB of memory.
pub const INDEX_CAPACITY: usize = 4096;

/// Chained hashes of the full blocks of `text`, at most [`MAX_BLOCKS`]. A trailing partial
/// block is left out (engines cache full blocks only).
pub fn block_hashes(text: &[u8]) -> Vec<u64> {
    joined_block_hashes(&[text])
}

/// [`block_hashes`] of the concatenation of `parts` (e.g. a body's `system` then its
/// `messages`), hashed where they lie: nothing is copied, and hashing stops after
/// [`MAX_BLOCKS`] blocks (this runs per request under `scored`).
pub fn joined_block_hashes(parts: &[&[u8]]) -> Vec<u64> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity((total / BLOCK_BYTES).min(MAX_BLOCKS));
    let mut parent: u64 = 0x8422_2325_cbf2_9ce4;
    let mut h = parent;
    let mut filled = 0;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        filled += 1;
        if filled == BLOCK_BYTES {
            parent = mix64(h);
            out.push(parent);
            if out.len() == MAX_BLOCKS {
                break;
            }
            h = parent;
            filled = 0;
        }
    }
    out
}

/// One replica's recently routed blocks.
#[derive(Debug)]
pub struct PrefixIndex {
    capacity: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex::new(INDEX_CAPACITY)
    }
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> PrefixIndex {
        PrefixIndex {
            capacity: capacity.max(2),
            current: HashSet::new(),
            previous: HashSet::new(),
        }
    }

    /// How many leading `blocks` are in the index.
    pub fn matched(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.current.contains(b) || self.previous.contains(b))
            .count()
    }

    /// Remembers that `blocks` were sent to this replica.
    pub fn insert(&mut self, blocks: &[u64]) {
        let half = self.capacity / 2;
        for &b in blocks {
            if self.current.len() >= half {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(b);
        }
    }

    /// Distinct blocks held (at most the capacity).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.difference(&self.current).count()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shared_prefix_shares_leading_blocks_only() {
        let system = "You are a helpful assistant. ".repeat(20);
        let a = block_hashes(format!("{system}user A asks {}", "a".repeat(200)).as_bytes());
        let b = block_hashes(format!("{system}user B asks {}", "b".repeat(200)).as_bytes());
        let shared = system.len() / BLOCK_BYTES;
        assert_eq!(a[..shared], b[..shared]);
        assert_ne!(a.get(shared + 1), b.get(shared + 1));
        assert!(block_hashes(b"short").is_empty());
        assert_eq!(block_hashes(&vec![b'x'; 1 << 20]).len(), MAX_BLOCKS);
    }

    #[test]
    fn joined_parts_hash_like_one_text() {
        let (a, b) = (vec![b'a'; 100], vec![b'b'; 1 << 16]);
        let mut whole = a.clone();
        whole.extend_from_slice(&b);
        assert_eq!(joined_block_hashes(&[&a, &b]), block_hashes(&whole));
        assert_eq!(joined_block_hashes(&[]), Vec::<u64>::new());
        // The chain, block by block over one contiguous text (the definition).
        let mut parent: u64 = 0x8422_2325_cbf2_9ce4;
        let expected: Vec<u64> = whole
            .chunks_exact(BLOCK_BYTES)
            .take(MAX_BLOCKS)
            .map(|block| {
                let mut h = parent;
                for &byte in block {
                    h ^= u64::from(byte);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
                parent = mix64(h);
                parent
            })
            .collect();
        assert_eq!(joined_block_hashes(&[&a, &b]), expected);
    }

    #[test]
    fn index_matches_leading_blocks_and_forgets_old_generations() {
        let mut index = PrefixIndex::new(8);
        index.insert(&[1, 2, 3]);
        assert_eq!(index.matched(&[1, 2, 3, 4]), 3);
        assert_eq!(index.matched(&[9, 1]), 0, "a miss ends the match");
        index.insert(&[4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(index.len() <= 8);
        assert_eq!(index.matched(&[1]), 0, "the oldest generation is gone");
        assert_eq!(index.matched(&[9, 10, 11, 12]), 4);
    }

    proptest! {
        #[test]
        fn index_stays_bounded(inserts in proptest::collection::vec(any::<u64>(), 0..2000), cap in 16usize..64) {
            let mut index = PrefixIndex::new(cap);
            for chunk in inserts.chunks(7) {
                index.insert(chunk);
                prop_assert!(index.len() <= cap);
                // What was just inserted is always found (a chunk is shorter than a generation).
                prop_assert_eq!(index.matched(chunk), chunk.len());
            }
        }

        #[test]
        fn hashes_depend_on_every_earlier_byte(text in proptest::collection::vec(any::<u8>(), 128..400), at in 0usize..128) {
            let mut other = text.clone();
            other[at] ^= 1;
            let (a, b) = (block_hashes(&text), block_hashes(&other));
            let first_changed = at / BLOCK_BYTES;
            prop_assert_eq!(&a[..first_changed], &b[..first_changed]);
            for k in first_changed..a.len() {
                prop_assert_ne!(a[k], b[k]);
            }
        }
    }
}
