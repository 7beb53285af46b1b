//! Reads the top-level `usage` (and `error`) of a non-streaming JSON response as it passes, in
//! pieces, with bounded memory: embeddings bodies can be many MB and are never held.
//!
//! A tiny state machine tracks depth, strings and escapes across pieces, recognises keys of the
//! top-level object and copies only the bytes of the `usage` and `error` values (each bounded).
//! String contents are skipped with memchr and other runs of unstructural bytes by a table, so
//! the state machine sees only the bytes that change it. Keys are compared as raw bytes (no upstream escapes
//! ASCII keys). The input is not validated; malformed input yields no usage, never a panic.

use super::chunk::WireUsage;
use memchr::memchr2;

/// Bytes that can change the state outside a string in the top-level object; `step` only
/// copies the others.
const STRUCTURAL: [bool; 256] = byte_table(b"\"{}[],:");

/// The same deeper down, where commas and colons change nothing (only the top-level object's
/// keys and values are tracked).
const NESTED_STRUCTURAL: [bool; 256] = byte_table(b"\"{}[]");

const fn byte_table(set: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut k = 0;
    while k < set.len() {
        table[set[k] as usize] = true;
        k += 1;
    }
    table
}

/// Default bound on a captured value.
pub const DEFAULT_MAX_CAPTURE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Usage,
    Error,
}

#[derive(Debug)]
pub struct JsonUsageScanner {
    max_capture: usize,
    depth: u32,
    in_string: bool,
    escape: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// Inside a depth-1 key string; `key` holds its first bytes.
    in_key: bool,
    key: [u8; 8],
    key_len: usize,
    /// The last depth-1 key was one we capture; its value starts after the `:`.
    matched: Option<Target>,
    capturing: Option<Target>,
    usage: Vec<u8>,
    error: Vec<u8>,
    overflowed: bool,
    /// The top-level value is not an object (or the object ended): nothing more to find.
    done: bool,
    /// The top-level object was closed.
    closed: bool,
    bytes: u64,
}

impl Default for JsonUsageScanner {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CAPTURE_BYTES)
    }
}

impl JsonUsageScanner {
    pub fn new(max_capture: usize) -> Self {
        Self {
            max_capture,
            depth: 0,
            in_string: false,
            escape: false,
            expect_key: false,
            in_key: false,
            key: [0; 8],
            key_len: 0,
            matched: None,
            capturing: None,
            usage: Vec::new(),
            error: Vec::new(),
            overflowed: false,
            done: false,
            closed: false,
            bytes: 0,
        }
    }

    pub fn feed(&mut self, piece: &[u8]) {
        self.bytes += piece.len() as u64;
        let mut i = 0;
        while i < piece.len() && !self.done {
            // Runs of bytes `step` would only copy (string contents, numbers, literals, blanks)
            // are skipped, or copied, a slice at a time; `step` sees the bytes that change the
            // state. Keys, escapes and the top level go byte by byte (they are few).
            if self.depth > 0 && !self.escape && !self.in_key {
                let rest = &piece[i..];
                let run = if self.in_string {
                    memchr2(b'"', b'\\', rest).unwrap_or(rest.len())
                } else {
                    let table = if self.depth == 1 {
                        &STRUCTURAL
                    } else {
                        &NESTED_STRUCTURAL
                    };
                    rest.iter()
                        .position(|&b| table[usize::from(b)])
                        .unwrap_or(rest.len())
                };
                self.capture_run(&rest[..run]);
                i += run;
                if i == piece.len() {
                    return;
                }
            }
            self.step(piece[i]);
            i += 1;
        }
    }

    /// What `capture` does for each byte of `run`, at once.
    fn capture_run(&mut self, run: &[u8]) {
        let Some(target) = self.capturing else {
            return;
        };
        let max = self.max_capture;
        let buffer = self.buffer(target);
        if buffer.len() + run.len() <= max {
            buffer.extend_from_slice(run);
        } else {
            *buffer = Vec::new();
            self.capturing = None;
            self.overflowed = true;
        }
    }

    fn step(&mut self, b: u8) {
        if self.in_string {
            self.capture(b);
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.in_key {
                    self.in_key = false;
                    self.matched = match &self.key[..self.key_len] {
                        b"usage" => Some(Target::Usage),
                        b"error" => Some(Target::Error),
                        _ => None,
                    };
                }
            } else if self.in_key {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = b;
                }
                // An overlong key can never match: make its length impossible.
                self.key_len = (self.key_len + 1).min(self.key.len());
            }
            return;
        }
        let ends_value = self.depth == 1 && (b == b',' || b == b'}');
        if ends_value {
            self.capturing = None;
        } else {
            self.capture(b);
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.in_key = true;
                    self.key_len = 0;
                    self.expect_key = false;
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && b == b'[' {
                    self.done = true;
                }
                if self.depth == 0 {
                    self.expect_key = true;
                }
                self.depth = self.depth.saturating_add(1);
            }
            b'}' | b']' => {
                if self.depth == 1 && b == b'}' {
                    self.closed = true;
                }
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.done = true;
                }
            }
            b',' if self.depth == 1 => self.expect_key = true,
            b':' if self.depth == 1 => {
                self.capturing = self.matched.take();
                if let Some(target) = self.capturing {
                    self.buffer(target).clear();
                }
            }
            b if self.depth == 0 && !b.is_ascii_whitespace() => self.done = true,
            _ => {}
        }
    }

    fn capture(&mut self, b: u8) {
        let Some(target) = self.capturing else {
            return;
        };
        let max = self.max_capture;
        let buffer = self.buffer(target);
        if buffer.len() < max {
            buffer.push(b);
        } else {
            *buffer = Vec::new();
            self.capturing = None;
            self.overflowed = true;
        }
    }

    fn buffer(&mut self, target: Target) -> &mut Vec<u8> {
        match target {
            Target::Usage => &mut self.usage,
            Target::Error => &mut self.error,
        }
    }

    /// Bytes held (always ≤ 2 × the bound).
    pub fn carried_bytes(&self) -> usize {
        self.usage.len() + self.error.len()
    }

    /// A captured value exceeded the bound and was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The top-level object was closed (the body was not cut short).
    pub fn complete(&self) -> bool {
        self.closed
    }

    pub fn body_bytes(&self) -> u64 {
        self.bytes
    }

    /// The top-level `usage`, if present, complete and well-formed (`null` gives `None`).
    pub fn usage(&self) -> Option<WireUsage> {
        if self.capturing == Some(Target::Usage) {
            return None; // body ended inside the value
        }
        serde_json::from_slice::<Option<WireUsage>>(self.usage.trim_ascii())
            .ok()
            .flatten()
    }

    /// Raw bytes of the top-level `usage` value, if present and complete.
    pub fn usage_raw(&self) -> Option<&[u8]> {
        let v = self.usage.trim_ascii();
        (!v.is_empty() && self.capturing != Some(Target::Usage)).then_some(v)
    }

    /// Raw bytes of the top-level `error` value (`None` if absent or `null`).
    pub fn error_value(&self) -> Option<&[u8]> {
        let v = self.error.trim_ascii();
        (!v.is_empty() && v != b"null" && self.capturing != Some(Target::Error)).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(pieces: &[&[u8]]) -> JsonUsageScanner {
        let mut s = JsonUsageScanner::default();
        for p in pieces {
            s.feed(p);
        }
        s
    }

    /// The scanner as it was before runs were skipped: every byte through `step`.
    fn bytewise(max_capture: usize, pieces: &[&[u8]]) -> JsonUsageScanner {
        let mut s = JsonUsageScanner::new(max_capture);
        for piece in pieces {
            s.bytes += piece.len() as u64;
            for &b in *piece {
                if s.done {
                    break;
                }
                s.step(b);
            }
        }
        s
    }

    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "\"",
            "\\",
            ":",
            ",",
            " ",
            "\n",
            "1",
            "-2.5e3",
            "true",
            "null",
            "abc",
            "\"usage\"",
            "\"error\"",
            "\"usage\":",
            "\"error\":",
            "\"us",
            "age\"",
            "{\"prompt_tokens\":7,\"completion_tokens\":3}",
            "\"x\\\"y\"",
            "é",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Skipping runs changes nothing: the whole state (captures, depth, flags, counts)
        /// equals the byte-by-byte machine's, for any input cut into any pieces.
        #[test]
        fn runs_give_the_bytewise_state(
            body in prop::collection::vec(fragment(), 0..40).prop_map(|f| f.concat()),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            max_capture in prop::sample::select(vec![0usize, 1, 5, 12, 40, 64 * 1024]),
        ) {
            let bytes = body.as_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in at {
                pieces.push(&bytes[from..cut]);
                from = cut;
            }
            pieces.push(&bytes[from..]);
            let mut fast = JsonUsageScanner::new(max_capture);
            for piece in &pieces {
                fast.feed(piece);
            }
            let slow = bytewise(max_capture, &pieces);
            prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        }
    }

    #[test]
    fn corpus_bodies_give_the_bytewise_state_split_anywhere() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi \"there\" {[,:]}","tool_calls":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7,"prompt_tokens_details":null},"prompt_logprobs":null}"#;
        for i in 0..=body.len() {
            let mut fast = JsonUsageScanner::default();
            fast.feed(&body[..i]);
            fast.feed(&body[i..]);
            let slow = bytewise(DEFAULT_MAX_CAPTURE_BYTES, &[&body[..i], &body[i..]]);
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "split {i}");
            assert_eq!(fast.usage().map(|u| u.total()), Some(19));
        }
    }

    #[test]
    fn only_top_level_usage_counts() {
        let body = br#"{"choices":[{"usage":{"prompt_tokens":99},"text":"\"usage\": {"}],"x":"usage","usage" : {"total_tokens":3,"prompt_tokens":1,"completion_tokens":2} ,"z":1}"#;
        for i in 0..=body.len() {
            let s = scan(&[&body[..i], &body[i..]]);
            let u = s.usage().expect("usage");
            assert_eq!(
                (u.prompt_tokens, u.completion_tokens, u.total()),
                (Some(1), Some(2), 3),
                "split {i}"
            );
        }
    }

    #[test]
    fn error_value_and_null_usage() {
        let s = scan(&[br#"{"usage":null,"error":{"message":"m","code":400}}"#]);
        assert!(s.usage().is_none());
        assert_eq!(s.error_value(), Some(&br#"{"message":"m","code":400}"#[..]));
        let s = scan(&[br#"{"error":"Unauthorized"}"#]);
        assert_eq!(s.error_value(), Some(&br#""Unauthorized""#[..]));
    }

    #[test]
    fn truncated_or_oversized_usage_is_none() {
        assert!(scan(&[br#"{"usage":{"prompt_tokens":1"#]).usage().is_none());
        let mut s = JsonUsageScanner::new(8);
        s.feed(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        assert!(s.usage().is_none() && s.overflowed());
    }

    #[test]
    fn non_object_bodies_yield_nothing() {
        for body in [
            &br#"[{"usage":{"prompt_tokens":1}}]"#[..],
            b"\"usage\"",
            b"",
            b"}}}{",
        ] {
            assert!(scan(&[body]).usage().is_none());
        }
    }
}
