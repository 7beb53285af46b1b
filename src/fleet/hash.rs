//! Stable hashing for prefix affinity. Spelled out here (FNV-1a + a 64-bit finaliser) rather
//! than `std`'s `DefaultHasher`, whose algorithm may change between Rust releases: several
//! proxy instances built at different times must send the same prefix to the same replica.

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads every input bit over the whole output, which FNV alone
/// does poorly for short keys.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The prefix key for [`super::select::SelectCtx::prefix_key`] from bytes that identify the
/// cacheable prefix (system prompt and first messages, or a session header value).
pub fn prefix_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a(bytes))
}

/// Rendezvous (highest random weight) score of one replica for one key.
pub fn rendezvous(key: u64, replica_hash: u64) -> u64 {
    mix64(key ^ mix64(replica_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fnv_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn prefix_keys_differ_for_near_inputs() {
        assert_ne!(prefix_key(b"system: a"), prefix_key(b"system: b"));
        assert_eq!(prefix_key(b"same"), prefix_key(b"same"));
    }
}
