//! The one home of the rough byte-to-token estimate (~4 bytes, or characters, per token for
//! English with BPE tokenizers), used where no tokenizer count exists: admission's reservation,
//! a cut stream's prompt, a completion the replica did not report. A leaf: std only.

/// Bytes (or characters) per token, rounded in the estimate's favour of over-counting.
pub const BYTES_PER_TOKEN: u64 = 4;

/// `ceil(n / BYTES_PER_TOKEN)`: tokens for `n` bytes or characters.
pub fn tokens_for(n: u64) -> u64 {
    n.div_ceil(BYTES_PER_TOKEN)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_up() {
        assert_eq!(super::tokens_for(0), 0);
        assert_eq!(super::tokens_for(1), 1);
        assert_eq!(super::tokens_for(84), 21);
    }
}
