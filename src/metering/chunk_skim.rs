//! The fast path of [`super::stream::StreamMeter`]: the facts of one ordinary streamed chunk
//! (`choices` with text deltas and finish reasons, everything else ignored) read by a small
//! strict JSON walker that skips what it ignores with memchr instead of serde's derive — the
//! chunk parse was most of tokengate's CPU per streamed token (~6 000 instructions per
//! 250-byte vLLM chunk under callgrind).
//!
//! It is conservative: it answers only when it is sure serde would parse the same event to the
//! same facts, and says [`None`] otherwise (tool-call deltas, a non-null `usage` or `error`,
//! Triton's `text_output`, escaped keys, surrogate escapes, deep nesting, any syntax it does
//! not accept); the caller then takes the serde path. A property test holds it to that:
//! whenever it answers, serde parses the event to the same facts.

use memchr::memchr2;

/// Deeper than this, leave it to serde (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// What one chunk event contributes to the stream's meter.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EventFacts<'a> {
    /// `choices` is a non-empty array.
    pub has_choices: bool,
    /// `choices` is `[]`.
    pub empty_choices: bool,
    /// Choices with generated text in this event, and their characters.
    pub content_deltas: u64,
    pub text_chars: u64,
    /// Choices with tool-call deltas, and their characters (names and arguments).
    pub tool_call_deltas: u64,
    pub tool_call_chars: u64,
    /// `(index, finish_reason)` of the choices that finished.
    pub finishes: Vec<(u32, &'a str)>,
    pub usage: Option<super::WireUsage>,
    /// `error` is present and not `null`.
    pub error: bool,
}

impl EventFacts<'_> {
    /// A text or tool-call delta arrived (a token for TTFT and the gaps).
    pub fn token_event(&self) -> bool {
        self.content_deltas > 0 || self.tool_call_deltas > 0
    }
}

/// The facts of an ordinary chunk, or `None`: let serde decide.
pub(crate) fn skim(data: &[u8]) -> Option<EventFacts<'_>> {
    // Checked once for the whole event, so no string needs its own check. Control bytes are
    // refused inside strings and rare between tokens (a compact chunk has none): serde's call.
    let (non_ascii, control) = scan_bytes(data);
    if control || (non_ascii && std::str::from_utf8(data).is_err()) {
        return None;
    }
    let mut cur = Cursor { data, pos: 0 };
    let mut facts = EventFacts::default();
    let mut seen = [false; 4];
    cur.ws();
    cur.expect(b'{')?;
    cur.members(|cur, key| {
        let slot = match key {
            b"choices" => 0,
            b"usage" => 1,
            b"error" => 2,
            b"text_output" => return None,
            _ => return cur.skip_value(0),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None; // serde rejects a duplicate field
        }
        match slot {
            0 => choices(cur, &mut facts),
            // Non-null usage (once per stream) and errors take the serde path.
            _ => cur.null(),
        }
    })?;
    cur.ws();
    (cur.pos == data.len()).then_some(facts)
}

fn choices<'a>(cur: &mut Cursor<'a>, facts: &mut EventFacts<'a>) -> Option<()> {
    if cur.peek() == Some(b'n') {
        return cur.null();
    }
    cur.expect(b'[')?;
    cur.ws();
    if cur.peek() == Some(b']') {
        cur.pos += 1;
        facts.empty_choices = true;
        return Some(());
    }
    facts.has_choices = true;
    loop {
        choice(cur, facts)?;
        cur.ws();
        match cur.next()? {
            b',' => cur.ws(),
            b']' => return Some(()),
            _ => return None,
        }
    }
}

fn choice<'a>(cur: &mut Cursor<'a>, facts: &mut EventFacts<'a>) -> Option<()> {
    cur.expect(b'{')?;
    let (mut index, mut chars, mut finish) = (0u32, 0u64, None);
    let mut seen = [false; 4];
    cur.members(|cur, key| {
        let slot = match key {
            b"index" => 0,
            b"delta" => 1,
            b"text" => 2,
            b"finish_reason" => 3,
            _ => return cur.skip_value(1),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            0 => index = cur.small_uint()?,
            1 => chars += delta(cur)?,
            2 => chars += cur.text_or_null()?,
            _ => finish = cur.plain_str_or_null()?,
        }
        Some(())
    })?;
    if chars > 0 {
        facts.content_deltas += 1;
        facts.text_chars += chars;
    }
    if let Some(reason) = finish {
        facts.finishes.push((index, reason));
    }
    Some(())
}

/// Characters of `content`, `reasoning_content` and `reasoning`; `None` on tool calls.
fn delta(cur: &mut Cursor<'_>) -> Option<u64> {
    if cur.peek() == Some(b'n') {
        cur.null()?;
        return Some(0);
    }
    cur.expect(b'{')?;
    let mut chars = 0;
    let mut seen = [false; 3];
    cur.members(|cur, key| {
        let slot = match key {
            b"content" => 0,
            b"reasoning_content" => 1,
            b"reasoning" => 2,
            // Tool-call deltas are rarer: serde counts them.
            b"tool_calls" => return None,
            _ => return cur.skip_value(2),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        chars += cur.text_or_null()?;
        Some(())
    })?;
    Some(chars)
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The members of an object whose `{` was read: `f` gets each key (raw, unescaped ASCII
    /// only) with the cursor at its value, and must consume the value.
    fn members(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let (key, escaped) = self.raw_str()?;
            if escaped || !key.is_ascii() {
                return None;
            }
            self.ws();
            self.expect(b':')?;
            self.ws();
            f(self, key)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The raw bytes of a string whose opening quote was read, and whether it holds escapes
    /// (checked as serde checks them); the cursor ends after the closing quote.
    fn raw_str(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.pos;
        let mut escaped = false;
        loop {
            let at = self.pos + find_quote_or_backslash(self.data.get(self.pos..)?)?;
            self.pos = at + 1;
            if self.data[at] == b'"' {
                return Some((&self.data[start..at], escaped));
            }
            escaped = true;
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let hex = self.data.get(self.pos..self.pos + 4)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    let unit = u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                    if (0xD800..0xE000).contains(&unit) {
                        return None; // surrogates: serde's pairing rules decide
                    }
                    self.pos += 4;
                }
                _ => return None,
            }
        }
    }

    /// A string's characters once decoded (serde's `chars().count()`), or 0 for `null`.
    fn text_or_null(&mut self) -> Option<u64> {
        match self.next()? {
            b'n' => self.literal(b"ull").map(|()| 0),
            b'"' => self.raw_str().map(|(raw, _)| decoded_chars(raw)),
            _ => None,
        }
    }

    /// A string without escapes (finish reasons are plain words), or `None` for `null`.
    fn plain_str_or_null(&mut self) -> Option<Option<&'a str>> {
        match self.next()? {
            b'n' => self.literal(b"ull").map(|()| None),
            b'"' => {
                let (raw, escaped) = self.raw_str()?;
                if escaped {
                    return None;
                }
                std::str::from_utf8(raw).ok().map(Some)
            }
            _ => None,
        }
    }

    /// A `u32` written as a plain non-negative integer.
    fn small_uint(&mut self) -> Option<u32> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.data[start..self.pos];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None; // serde refuses a float for an integer field
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    fn null(&mut self) -> Option<()> {
        self.literal(b"null")
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.data.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Skips one JSON value, checking its syntax as strictly as serde does.
    fn skip_value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.next()? {
            b'"' => self.raw_str().map(|_| ()),
            b'{' => self.members(|cur, _| cur.skip_value(depth + 1)),
            b'[' => self.skip_array(depth),
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            b'-' | b'0'..=b'9' => {
                self.pos -= 1;
                self.number()
            }
            _ => None,
        }
    }

    fn skip_array(&mut self, depth: u32) -> Option<()> {
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(());
        }
        loop {
            self.skip_value(depth + 1)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.one_or_more_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}

/// Characters of a checked raw string once decoded: UTF-8 lead bytes outside escapes, one per
/// escape (surrogate escapes were refused, so `\uXXXX` is one character).
fn decoded_chars(raw: &[u8]) -> u64 {
    let mut chars = 0u64;
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        chars += lead_bytes(&rest[..at]) + 1;
        let skip = if rest.get(at + 1) == Some(&b'u') {
            6
        } else {
            2
        };
        rest = rest.get(at + skip..).unwrap_or_default();
    }
    chars + lead_bytes(rest)
}

fn lead_bytes(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64
}

/// Repeats a byte in every lane of a word.
const fn lanes(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit of each lane whose byte is below `n` (n ≤ 128); the lowest marked lane is
/// exact (higher ones may be false after a true one, which the callers never read).
fn lanes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(lanes(n)) & !word & lanes(0x80)
}

/// Eight bytes (exactly) as one little-endian word.
fn word(bytes: &[u8]) -> u64 {
    let mut lane = [0u8; 8];
    lane.copy_from_slice(bytes);
    u64::from_le_bytes(lane)
}

/// The index of the first `"` or `\` — eight bytes per step (a chunk's strings are short,
/// where memchr's set-up costs more than it saves), memchr beyond 64 bytes.
pub(crate) fn find_quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= bytes.len() && at < 64 {
        let w = word(&bytes[at..at + 8]);
        let hits = lanes_below(w ^ lanes(b'"'), 1) | lanes_below(w ^ lanes(b'\\'), 1);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = &bytes[at..];
    let found = if rest.len() < 8 {
        rest.iter().position(|&b| b == b'"' || b == b'\\')
    } else {
        memchr2(b'"', b'\\', rest)
    };
    found.map(|i| i + at)
}

/// Whether the event holds non-ASCII bytes (then its UTF-8 is checked) and whether it holds
/// a byte below 0x20 — eight bytes per step.
pub(crate) fn scan_bytes(data: &[u8]) -> (bool, bool) {
    let (mut high, mut control) = (0u64, 0u64);
    let mut words = data.chunks_exact(8);
    for w in words.by_ref().map(word) {
        high |= w & lanes(0x80);
        control |= lanes_below(w, 0x20);
    }
    let tail = words.remainder();
    (
        high != 0 || !tail.is_ascii(),
        control != 0 || tail.iter().any(|&b| b < 0x20),
    )
}
