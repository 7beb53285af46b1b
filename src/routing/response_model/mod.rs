//! The served name back to the alias in response bodies: the request's byte-exact `model`
//! splice in reverse, for the client.
//!
//! Pure logic: no I/O, no clock, no Pingora. [`ModelRewriter`] is fed the body piece by piece
//! as it passes (never buffered): it scans the JSON structure (string and escape state, the
//! nesting depth) and replaces only the string value of the first **top-level** `model` key
//! of each JSON text (a body, an SSE event's `data:`) — for Anthropic Messages also
//! `message.model` (a stream's `message_start`), for OpenAI Responses `response.model` (a
//! stream's `response.created` … `response.completed`) — when that value is one of the replica's
//! served names (compared decoded, so `org\/m` matches `org/m`; a vLLM serving several names
//! answers every one with its first). Every other byte passes through untouched: key order,
//! whitespace, escapes, a `model` key nested in content or tool arguments, a `"model"` inside
//! a string, a value that names something else. Once that value is settled the rest of the
//! JSON text passes unscanned.
//!
//! State is bounded whatever the body: the depth is a counter (keys are only tracked on the
//! two outer levels), a key is kept up to [`MAX_KEY`] bytes, and a candidate value is held
//! up to six bytes per byte of the served name (its longest escaped form) before it is let go
//! as "not the served name". Held bytes are the only delay: at most one `model` value.
//!
//! In [`Framing::Sse`] every line break ends the JSON being scanned (an SSE `data:` line holds
//! one JSON text), so a cut or malformed event cannot confuse the next one. Text between
//! JSON objects (`data: `, `event: …`, `[DONE]`) passes through.
//!
//! # Performance
//!
//! Measured with `-O` on the 2-core dev container while other builds ran (load ≈ 7, so wide
//! ranges): a 1 MiB embeddings body with `model` last 0.8–1.8 ms (0.6–1.3 GB/s: beyond level 2
//! only `"{}[]` and line ends are looked at); with `model` first (vLLM's order) 55–130 µs, the
//! copy of the rewritten piece; a 268-byte chat chunk 0.55–1.2 µs.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Keys longer than this (raw) are neither `model` nor `message`.
const MAX_KEY: usize = 32;

/// Bytes that change the scan outside strings at depth 0 or beyond level 2.
const NESTED_STRUCTURE: [bool; 256] = byte_set(b"\"{}[]\n\r");

/// Bytes that change the scan outside strings at levels 1 and 2 (the others are numbers,
/// literals and blanks, which `structural` treats alike).
const OUTER_STRUCTURE: [bool; 256] = byte_set(b"\"{}[]:,\n\r");
/// Bytes that end a run of a key's bytes (SSE: a line end resets the scan).
const KEY_STOPS_SSE: [bool; 256] = byte_set(b"\"\\\n\r");
const KEY_STOPS_JSON: [bool; 256] = byte_set(b"\"\\");

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut k = 0;
    while k < bytes.len() {
        table[bytes[k] as usize] = true;
        k += 1;
    }
    table
}

/// Where the `model` to rewrite sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI chat/completions/embeddings: top-level `model` of each object.
    OpenAi,
    /// Anthropic Messages: top-level `model`, and `message.model` (`message_start`).
    Anthropic,
    /// OpenAI Responses: top-level `model` (a body), and `response.model` (stream events).
    Responses,
}

impl Shape {
    /// The level-1 key whose object carries a second `model` to rewrite.
    fn wrapper(self) -> Option<Key> {
        match self {
            Shape::OpenAi => None,
            Shape::Anthropic => Some(Key::Message),
            Shape::Responses => Some(Key::Response),
        }
    }
}

/// How JSON texts follow each other in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document (newlines are whitespace).
    Json,
    /// Server-sent events: each line holds at most one JSON text.
    Sse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Model,
    Message,
    Response,
    Other,
}

/// Rewrites `model` from a served name to the alias in a body fed piece by piece.
#[derive(Debug)]
pub struct ModelRewriter {
    /// The names to replace (the alias among them is replaced by itself).
    served: Arc<[String]>,
    /// The alias JSON-escaped, without quotes.
    alias_json: Box<[u8]>,
    shape: Shape,
    framing: Framing,
    scan: Scan,
    /// Raw bytes of the key being read (up to `MAX_KEY + 1`).
    key: Vec<u8>,
    /// Raw bytes of a candidate `model` value (between the quotes), while `holding`.
    held: Vec<u8>,
    held_limit: usize,
}

/// The structural scan state (everything but the buffers).
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The string being read is a key of a level-1 or level-2 object.
    string_is_key: bool,
    /// The string being read is a candidate `model` value.
    holding: bool,
    /// At level 1 or 2 of an object: the next string is a key.
    expect_key: bool,
    /// A key was just read at level 1 or 2; a `:` makes its value next.
    after_key: bool,
    /// A `:` followed the key: the next token is its value.
    awaiting_value: bool,
    last_key: Option<Key>,
    /// The level-2 container is an object (not an array).
    level2_object: bool,
    /// The level-2 object is the value of the shape's wrapper key (`message`, `response`).
    in_message: bool,
    /// A candidate value was settled: the rest of this JSON text passes unscanned (a
    /// response names its model once).
    done: bool,
}

impl ModelRewriter {
    /// `served`: the names a response may carry instead of the alias (shared with the config
    /// snapshot: nothing is copied per request). `None` when there is nothing to rewrite
    /// (every name is the alias): zero cost.
    pub fn new(served: Arc<[String]>, alias: &str, shape: Shape, framing: Framing) -> Option<Self> {
        let longest = served
            .iter()
            .filter(|n| *n != alias)
            .map(String::len)
            .max()
            .filter(|&n| n > 0)?;
        let quoted = serde_json::to_string(alias).ok()?;
        let alias_json = quoted.as_bytes()[1..quoted.len() - 1].into();
        Some(ModelRewriter {
            served,
            alias_json,
            shape,
            framing,
            scan: Scan::default(),
            key: Vec::new(),
            held: Vec::new(),
            held_limit: longest.saturating_mul(6),
        })
    }

    /// One piece of the body: `None` when it passes unchanged, else what the client gets
    /// instead (the alias spliced in, or the piece minus a candidate value still held).
    pub fn rewrite(&mut self, input: &[u8]) -> Option<Bytes> {
        self.rewrite_runs::<true>(input)
    }

    /// `RUNS`: keys and the outer levels' numbers and literals are taken a run at a time
    /// (`false`, byte by byte, is the reference the tests hold the fast scan to).
    fn rewrite_runs<const RUNS: bool>(&mut self, input: &[u8]) -> Option<Bytes> {
        let mut out: Option<BytesMut> = self.scan.holding.then(BytesMut::new);
        // `input[pending..i]` passed the scan and is not yet copied to `out`.
        let mut pending = 0;
        let mut i = 0;
        while i < input.len() {
            if self.scan.holding {
                i = self.hold(input, i, &mut out);
                pending = i;
                continue;
            }
            let next = if RUNS {
                self.advance(input, i)
            } else {
                self.next_to_scan(input, i)
            };
            match next {
                Some(next) => i = next,
                None => break,
            }
            if self.step(input[i]) {
                // A candidate value opens after this quote.
                let buf = out.get_or_insert_with(|| BytesMut::with_capacity(input.len()));
                buf.extend_from_slice(&input[pending..=i]);
                pending = i + 1;
            }
            i += 1;
        }
        let mut buf = out?;
        if !self.scan.holding {
            buf.extend_from_slice(&input[pending..]);
        }
        Some(buf.freeze())
    }

    /// The next byte at or after `i` that can change the scan; `None`: the rest passes.
    fn next_to_scan(&self, input: &[u8], i: usize) -> Option<usize> {
        let s = &self.scan;
        let rest = &input[i..];
        let found = if s.done {
            // This JSON text's `model` is settled: on to the next line (SSE) or the end.
            match self.framing {
                Framing::Sse => memchr::memchr(b'\n', rest),
                Framing::Json => None,
            }
        } else if s.in_string && !s.string_is_key && !s.escape {
            // Through a plain string: to its next quote, backslash or line end.
            memchr::memchr3(b'"', b'\\', b'\n', rest)
        } else if !s.in_string && (s.depth == 0 || s.depth > 2) {
            // Numbers, literals, `:` and `,` change nothing at these depths.
            rest.iter().position(|&b| NESTED_STRUCTURE[usize::from(b)])
        } else {
            Some(0)
        };
        found.map(|n| i + n)
    }

    /// [`Self::next_to_scan`], and what `step` would do with the bytes it skips is done for
    /// a whole run at once: a key's bytes are kept (up to `MAX_KEY + 1`), and at the outer
    /// levels a number or literal clears the key's pending value.
    fn advance(&mut self, input: &[u8], i: usize) -> Option<usize> {
        let s = self.scan;
        if s.done || s.escape || (s.in_string && !s.string_is_key) {
            return self.next_to_scan(input, i);
        }
        let rest = &input[i..];
        if s.in_string {
            let stops = match self.framing {
                Framing::Sse => &KEY_STOPS_SSE,
                Framing::Json => &KEY_STOPS_JSON,
            };
            let run = rest.iter().position(|&b| stops[usize::from(b)]);
            let taken = run.unwrap_or(rest.len());
            let room = (MAX_KEY + 1).saturating_sub(self.key.len());
            self.key.extend_from_slice(&rest[..taken.min(room)]);
            return run.map(|n| i + n);
        }
        if s.depth == 0 || s.depth > 2 {
            return self.next_to_scan(input, i);
        }
        let run = rest.iter().position(|&b| OUTER_STRUCTURE[usize::from(b)]);
        let skipped = &rest[..run.unwrap_or(rest.len())];
        if skipped.iter().any(|&b| b != b' ' && b != b'\t') {
            self.scan.awaiting_value = false;
            self.scan.after_key = false;
        }
        run.map(|n| i + n)
    }

    /// The body ended: a value still held (a cut body) goes out as it came.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scan = Scan::default();
        self.key.clear();
        if self.held.is_empty() {
            return None;
        }
        Some(Bytes::from(std::mem::take(&mut self.held)))
    }

    /// Bytes of a held candidate from `input[i..]`; returns where scanning resumes.
    fn hold(&mut self, input: &[u8], i: usize, out: &mut Option<BytesMut>) -> usize {
        let buf = out.get_or_insert_with(BytesMut::new);
        let mut j = i;
        while j < input.len() {
            let b = input[j];
            if self.scan.escape {
                self.scan.escape = false;
            } else if b == b'\\' {
                self.scan.escape = true;
            } else if b == b'"' {
                // The value is complete: the alias if it was the served name. The closing
                // quote is scanned (and copied) as usual.
                if self.is_served() {
                    buf.extend_from_slice(&self.alias_json);
                } else {
                    buf.extend_from_slice(&self.held);
                }
                self.held.clear();
                self.scan.holding = false;
                self.scan.done = true;
                return j;
            } else if b == b'\n' && self.framing == Framing::Sse {
                return self.let_go(buf, j);
            }
            self.held.push(b);
            j += 1;
            if self.held.len() > self.held_limit {
                return self.let_go(buf, j);
            }
        }
        j
    }

    /// The candidate is not the served name: what was held goes out, the string goes on.
    fn let_go(&mut self, buf: &mut BytesMut, resume: usize) -> usize {
        buf.extend_from_slice(&self.held);
        self.held.clear();
        self.scan.holding = false;
        self.scan.done = true;
        resume
    }

    fn is_served(&self) -> bool {
        let is_name = |value: &[u8]| self.served.iter().any(|n| n.as_bytes() == value);
        if !self.held.contains(&b'\\') {
            return is_name(&self.held);
        }
        decode(&self.held).is_some_and(|s| is_name(s.as_bytes()))
    }

    /// One byte outside a held value; `true` when it is the opening quote of a candidate.
    fn step(&mut self, b: u8) -> bool {
        if self.framing == Framing::Sse && (b == b'\n' || b == b'\r') {
            self.scan = Scan::default();
            self.key.clear();
            return false;
        }
        if self.scan.in_string {
            self.string_byte(b);
            return false;
        }
        if self.scan.depth == 0 {
            if b == b'{' {
                self.scan = Scan {
                    depth: 1,
                    expect_key: true,
                    ..Scan::default()
                };
            }
            return false;
        }
        self.structural(b)
    }

    fn string_byte(&mut self, b: u8) {
        let s = &mut self.scan;
        if s.escape {
            s.escape = false;
        } else if b == b'\\' {
            s.escape = true;
        } else if b == b'"' {
            s.in_string = false;
            if s.string_is_key {
                s.string_is_key = false;
                s.expect_key = false;
                s.after_key = true;
                s.last_key = Some(classify_key(&self.key));
                self.key.clear();
            }
            return;
        }
        if s.string_is_key && self.key.len() <= MAX_KEY {
            self.key.push(b);
        }
    }

    /// A byte outside strings at depth ≥ 1; `true` when a candidate value opens.
    fn structural(&mut self, b: u8) -> bool {
        let shape = self.shape;
        let s = &mut self.scan;
        let outer = s.depth <= 2;
        match b {
            b'"' => {
                s.in_string = true;
                let value_of = s.awaiting_value.then_some(s.last_key).flatten();
                s.awaiting_value = false;
                if outer && s.expect_key {
                    s.string_is_key = true;
                    self.key.clear();
                } else if outer && value_of == Some(Key::Model) {
                    let top = s.depth == 1;
                    let message = s.depth == 2 && s.in_message;
                    if top || message {
                        s.holding = true;
                        return true;
                    }
                }
            }
            b'{' | b'[' => {
                if s.depth == 1 {
                    s.level2_object = b == b'{';
                    s.in_message =
                        s.awaiting_value && s.last_key.is_some() && s.last_key == shape.wrapper();
                }
                s.depth = s.depth.saturating_add(1);
                if s.depth <= 2 {
                    s.expect_key = b == b'{';
                }
                s.awaiting_value = false;
                s.after_key = false;
            }
            b'}' | b']' => {
                s.depth -= 1;
                if s.depth == 0 {
                    *s = Scan::default();
                } else if s.depth <= 2 {
                    s.expect_key = false;
                    s.awaiting_value = false;
                }
            }
            b':' if outer && s.after_key => {
                s.after_key = false;
                s.awaiting_value = true;
            }
            b',' if outer => {
                s.expect_key = s.depth == 1 || s.level2_object;
                s.awaiting_value = false;
                s.after_key = false;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if outer => {
                s.awaiting_value = false;
                s.after_key = false;
            }
            _ => {}
        }
        false
    }
}

/// A key's raw bytes (between the quotes), decoded when escaped.
fn classify_key(raw: &[u8]) -> Key {
    if raw.len() > MAX_KEY {
        return Key::Other;
    }
    let decoded;
    let key: &[u8] = if raw.contains(&b'\\') {
        match decode(raw) {
            Some(s) => {
                decoded = s;
                decoded.as_bytes()
            }
            None => return Key::Other,
        }
    } else {
        raw
    };
    match key {
        b"model" => Key::Model,
        b"message" => Key::Message,
        b"response" => Key::Response,
        _ => Key::Other,
    }
}

/// JSON string contents (between the quotes) decoded.
fn decode(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

#[cfg(test)]
mod tests;
