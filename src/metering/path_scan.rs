//! Reads a few values at fixed key paths of one JSON object as it passes, in pieces, with
//! bounded memory: a Responses API `response.completed` event repeats the whole output text,
//! so it is scanned, never held.
//!
//! Like [`super::json::JsonUsageScanner`], a small state machine tracks depth, strings and
//! escapes across pieces; keys of the objects on the path (depth ≤ [`MAX_PATH`]) are compared
//! as raw bytes, and only the bytes of the target values are kept (each bounded; a target with
//! bound 0 is only measured). The model's own text may contain `"usage":`: inside a string it
//! is never a key. Malformed input yields nothing, never a panic.

use memchr::memchr2;

/// Deepest key path a target may have.
pub const MAX_PATH: usize = 3;
/// Longest key compared; longer keys never match.
const KEY_MAX: usize = 16;

/// A value at a key path, e.g. `["response", "usage"]`, kept up to `max` bytes (0: measured).
#[derive(Debug, Clone, Copy)]
pub struct PathTarget {
    pub path: &'static [&'static [u8]],
    pub max: usize,
}

#[derive(Debug)]
pub struct PathScanner {
    targets: &'static [PathTarget],
    depth: usize,
    in_string: bool,
    escape: bool,
    expect_key: bool,
    in_key: bool,
    /// Per depth (1-based, ≤ MAX_PATH): the container is an object; the current key there.
    is_object: [bool; MAX_PATH + 1],
    keys: [[u8; KEY_MAX]; MAX_PATH + 1],
    key_lens: [usize; MAX_PATH + 1],
    /// The key just read completes a target's path: its value starts after the `:`.
    matched: Option<usize>,
    /// Target being captured, and the depth of its key.
    capturing: Option<(usize, usize)>,
    values: Vec<Vec<u8>>,
    lens: Vec<u64>,
    seen: Vec<bool>,
    overflowed: bool,
    closed: bool,
    done: bool,
}

impl PathScanner {
    pub fn new(targets: &'static [PathTarget]) -> Self {
        Self {
            targets,
            depth: 0,
            in_string: false,
            escape: false,
            expect_key: false,
            in_key: false,
            is_object: [false; MAX_PATH + 1],
            keys: [[0; KEY_MAX]; MAX_PATH + 1],
            key_lens: [0; MAX_PATH + 1],
            matched: None,
            capturing: None,
            values: targets.iter().map(|_| Vec::new()).collect(),
            lens: vec![0; targets.len()],
            seen: vec![false; targets.len()],
            overflowed: false,
            closed: false,
            done: false,
        }
    }

    /// Ready for the next value; keeps the buffers' allocations.
    pub fn reset(&mut self) {
        let targets = self.targets;
        let mut values = std::mem::take(&mut self.values);
        values.iter_mut().for_each(Vec::clear);
        *self = Self {
            values,
            ..Self::new(targets)
        };
    }

    pub fn feed(&mut self, piece: &[u8]) {
        let mut i = 0;
        while i < piece.len() && !self.done {
            if self.in_string && !self.escape && !self.in_key && self.measuring_only() {
                let skip = memchr2(b'"', b'\\', &piece[i..]).unwrap_or(piece.len() - i);
                if let Some((t, _)) = self.capturing {
                    self.lens[t] += skip as u64;
                }
                i += skip;
                if i == piece.len() {
                    return;
                }
            }
            self.step(piece[i]);
            i += 1;
        }
    }

    /// Nothing is being kept byte by byte (no capture, or a measured-only one).
    fn measuring_only(&self) -> bool {
        self.capturing.is_none_or(|(t, _)| self.targets[t].max == 0)
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
                    self.matched = self.match_path();
                }
            } else if self.in_key {
                let d = self.depth;
                let len = self.key_lens[d];
                if len < KEY_MAX {
                    self.keys[d][len] = b;
                }
                self.key_lens[d] = (len + 1).min(KEY_MAX);
            }
            return;
        }
        let ends_value = self
            .capturing
            .is_some_and(|(_, d)| self.depth == d && (b == b',' || b == b'}'));
        if ends_value {
            self.capturing = None;
        } else {
            self.capture(b);
        }
        self.structure(b);
    }

    fn structure(&mut self, b: u8) {
        match b {
            b'"' => {
                self.in_string = true;
                if self.expect_key && self.depth <= MAX_PATH {
                    self.in_key = true;
                    self.key_lens[self.depth] = 0;
                }
                self.expect_key = false;
            }
            b'{' | b'[' => {
                if self.depth == 0 && b == b'[' {
                    self.done = true;
                }
                self.depth = self.depth.saturating_add(1);
                if self.depth <= MAX_PATH {
                    self.is_object[self.depth] = b == b'{';
                    self.expect_key = b == b'{';
                }
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
            b',' if self.depth <= MAX_PATH && self.is_object[self.depth] => {
                self.expect_key = true;
            }
            b':' if self.depth <= MAX_PATH => {
                if let Some(t) = self.matched.take() {
                    self.capturing = Some((t, self.depth));
                    self.values[t].clear();
                    self.lens[t] = 0;
                    self.seen[t] = true;
                }
            }
            b if self.depth == 0 && !b.is_ascii_whitespace() => self.done = true,
            _ => {}
        }
    }

    /// The keys from depth 1 to here are a target's path (each enclosing key is the current
    /// one of its object: a deeper value is always inside the latest key's value).
    fn match_path(&self) -> Option<usize> {
        let depth = self.depth;
        self.targets.iter().position(|t| {
            t.path.len() == depth
                && t.path
                    .iter()
                    .enumerate()
                    .all(|(i, key)| &self.keys[i + 1][..self.key_lens[i + 1]] == *key)
        })
    }

    fn capture(&mut self, b: u8) {
        let Some((t, _)) = self.capturing else {
            return;
        };
        self.lens[t] += 1;
        let max = self.targets[t].max;
        if max == 0 {
            return;
        }
        let value = &mut self.values[t];
        if value.len() < max {
            value.push(b);
        } else {
            *value = Vec::new();
            self.capturing = None;
            self.seen[t] = false;
            self.overflowed = true;
        }
    }

    /// Raw bytes of target `t`'s value, if it was seen whole (`null` included).
    pub fn value(&self, t: usize) -> Option<&[u8]> {
        let complete = self.seen.get(t).copied().unwrap_or(false)
            && self.capturing.is_none_or(|(c, _)| c != t);
        let v = self.values.get(t)?.trim_ascii();
        (complete && !v.is_empty()).then_some(v)
    }

    /// Target `t`'s value as a string, if it was a string without escapes.
    pub fn string(&self, t: usize) -> Option<&str> {
        let v = self.value(t)?;
        let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if inner.contains(&b'\\') {
            return None;
        }
        std::str::from_utf8(inner).ok()
    }

    /// Bytes of target `t`'s value seen so far (kept or not).
    pub fn len(&self, t: usize) -> u64 {
        self.lens.get(t).copied().unwrap_or(0)
    }

    /// A kept value exceeded its bound and was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The top-level object was closed.
    pub fn complete(&self) -> bool {
        self.closed
    }

    /// Bytes held (each value ≤ its bound).
    pub fn carried_bytes(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: &[PathTarget] = &[
        PathTarget {
            path: &[b"type"],
            max: 64,
        },
        PathTarget {
            path: &[b"response", b"usage"],
            max: 1024,
        },
        PathTarget {
            path: &[b"delta"],
            max: 0,
        },
    ];

    fn scan(pieces: &[&[u8]]) -> PathScanner {
        let mut s = PathScanner::new(TARGETS);
        for p in pieces {
            s.feed(p);
        }
        s
    }

    #[test]
    fn finds_nested_usage_not_the_one_in_text() {
        let body = br#"{"type":"response.completed","response":{"output":[{"text":"\"usage\": {\"x\":1}","usage":{"input_tokens":99}}],"usage" : {"input_tokens":3,"output_tokens":2},"z":1},"usage":{"input_tokens":7}}"#;
        for i in 0..=body.len() {
            let s = scan(&[&body[..i], &body[i..]]);
            assert_eq!(s.string(0), Some("response.completed"), "split {i}");
            assert_eq!(
                s.value(1),
                Some(&br#"{"input_tokens":3,"output_tokens":2}"#[..]),
                "split {i}"
            );
            assert!(s.complete());
        }
    }

    #[test]
    fn measures_without_keeping_and_resets() {
        let mut s = scan(&[br#"{"type":"response.output_text.delta","delta":"h\"llo"}"#]);
        assert_eq!(s.len(2), 8);
        assert_eq!(s.carried_bytes(), "\"response.output_text.delta\"".len());
        s.reset();
        s.feed(br#"{"type":"x"}"#);
        assert_eq!((s.string(0), s.len(2)), (Some("x"), 0));
    }

    #[test]
    fn oversized_and_cut_values_are_none() {
        let s = scan(&[br#"{"response":{"usage":{"input_tokens":1"#]);
        assert!(s.value(1).is_none() && !s.complete());
        let big = format!(r#"{{"type":"{}"}}"#, "a".repeat(100));
        let s = scan(&[big.as_bytes()]);
        assert!(s.value(0).is_none() && s.overflowed());
        assert!(scan(&[br#"[{"type":"x"}]"#]).value(0).is_none());
    }
}
