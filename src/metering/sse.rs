//! Incremental Server-Sent Events parser working on bytes.
//!
//! Fed the body in arbitrary pieces, it calls back with each complete event. It keeps only the
//! current partial line and partial event (bounded by `max_event_bytes`), scans each byte once
//! (memchr for line ends; the carried bytes are never rescanned) and decodes nothing: the data
//! is handed out as bytes, so UTF-8 split across pieces is a non-issue.
//!
//! Follows the WHATWG event-stream rules, as openai-python does: `\n`, `\r\n` and `\r` end lines;
//! one space after the colon is dropped; `data` lines are joined with `\n`; lines starting with
//! `:` are comments; an event is dispatched on a blank line only if it has data; a partial event
//! at end of stream is not dispatched. A leading BOM is not stripped (no upstream sends one).

use memchr::{memchr, memchr2};

/// Default bound on the bytes of one event kept while it is incomplete.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// One complete event. Offsets are absolute positions in the body (first byte is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// `data` lines joined with `\n` (trailing whitespace kept).
    pub data: &'a [u8],
    pub event_type: Option<&'a [u8]>,
    pub id: Option<&'a [u8]>,
    pub retry: Option<u64>,
    /// First byte of the event's block (after the previous blank line).
    pub start: u64,
    /// Just past the blank line that ended the event.
    pub end: u64,
}

/// State of the stream when it ended, see [`SseParser::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndState {
    /// Bytes of an unterminated line remain.
    pub mid_line: bool,
    /// An event was started (fields or a partial line) but no blank line ended it.
    pub mid_event: bool,
}

#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    /// Bytes consumed so far: the absolute offset of the next piece.
    offset: u64,
    /// Absolute offset where the current (incomplete) block started.
    block_start: u64,
    /// Unterminated line carried over from previous pieces.
    line: Vec<u8>,
    /// The current line has at least one byte (tracked even when not stored).
    line_nonempty: bool,
    /// The last byte seen was `\r`: whether it is `\r\n` depends on the next byte.
    pending_cr: bool,
    data: Vec<u8>,
    data_lines: u32,
    event_type: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    retry: Option<u64>,
    /// The current event exceeded the bound: drop it up to its blank line.
    skipping: bool,
    overflowed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            offset: 0,
            block_start: 0,
            line: Vec::new(),
            line_nonempty: false,
            pending_cr: false,
            data: Vec::new(),
            data_lines: 0,
            event_type: None,
            id: None,
            retry: None,
            skipping: false,
            overflowed: false,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Absolute offset of the first byte not yet part of a completed block.
    pub fn block_start(&self) -> u64 {
        self.block_start
    }

    /// Some event was larger than the bound and was skipped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The current event is being skipped because it exceeded the bound.
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Bytes kept for the incomplete line and event (always ≤ the bound).
    pub fn carried_bytes(&self) -> usize {
        self.line.len()
            + self.data.len()
            + self.event_type.as_ref().map_or(0, Vec::len)
            + self.id.as_ref().map_or(0, Vec::len)
    }

    /// Value bytes of the current event's first `data` line seen so far, including an
    /// unterminated one. `None` while the event has no (recognisable) data line yet.
    pub fn partial_first_data(&self) -> Option<&[u8]> {
        if self.data_lines > 0 {
            let end = memchr(b'\n', &self.data).unwrap_or(self.data.len());
            return Some(&self.data[..end]);
        }
        let (name, value) = split_field(&self.line);
        (name == b"data" && self.line.len() > 4).then_some(value)
    }

    /// Feeds the next piece of the body; `on_event` is called for each event it completes.
    pub fn feed(&mut self, piece: &[u8], mut on_event: impl FnMut(&SseEvent<'_>)) {
        if piece.is_empty() {
            return;
        }
        let base = self.offset;
        self.offset += piece.len() as u64;
        let mut pos = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if piece[0] == b'\n' {
                pos = 1;
            }
            self.end_line(&[], base + pos as u64, &mut on_event);
        }
        while pos < piece.len() {
            let Some(k) = memchr2(b'\n', b'\r', &piece[pos..]) else {
                self.append_partial(&piece[pos..]);
                break;
            };
            let eol = pos + k;
            let after = if piece[eol] == b'\n' {
                eol + 1
            } else if eol + 1 == piece.len() {
                // `\r` ends the piece: wait for the next byte to know if it is `\r\n`.
                self.append_partial(&piece[pos..eol]);
                self.pending_cr = true;
                break;
            } else if piece[eol + 1] == b'\n' {
                eol + 2
            } else {
                eol + 1
            };
            self.end_line(&piece[pos..eol], base + after as u64, &mut on_event);
            pos = after;
        }
    }

    /// Ends the stream: settles a trailing `\r` (may complete an event) and reports whether an
    /// event was left incomplete. The incomplete event itself is not dispatched.
    pub fn finish(&mut self, mut on_event: impl FnMut(&SseEvent<'_>)) -> EndState {
        if self.pending_cr {
            self.pending_cr = false;
            let end = self.offset;
            self.end_line(&[], end, &mut on_event);
        }
        EndState {
            mid_line: self.line_nonempty,
            mid_event: self.line_nonempty
                || self.skipping
                || self.data_lines > 0
                || self.event_type.is_some()
                || self.id.is_some(),
        }
    }

    fn append_partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_nonempty = true;
        if self.skipping {
            return;
        }
        if self.carried_bytes() + bytes.len() > self.max_event_bytes {
            self.start_skipping();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// `tail` completes the carried line; `end` is the absolute offset after its line ending.
    fn end_line(&mut self, tail: &[u8], end: u64, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        let blank = !self.line_nonempty && tail.is_empty();
        self.line_nonempty = false;
        if blank {
            self.dispatch(end, on_event);
            return;
        }
        if self.skipping {
            return;
        }
        if self.line.is_empty() {
            self.field_line(tail);
        } else if self.carried_bytes() + tail.len() > self.max_event_bytes {
            self.start_skipping();
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(tail);
            self.field_line(&line);
            line.clear();
            self.line = line;
        }
    }

    fn field_line(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value) = split_field(line);
        match name {
            b"data" => {
                if self.carried_bytes() + value.len() + 1 > self.max_event_bytes {
                    self.start_skipping();
                    return;
                }
                if self.data_lines > 0 {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.data_lines += 1;
            }
            b"event" => self.event_type = Some(value.to_vec()),
            b"id" if !value.contains(&0) => self.id = Some(value.to_vec()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        if self.carried_bytes() > self.max_event_bytes {
            self.start_skipping();
        }
    }

    fn start_skipping(&mut self) {
        self.skipping = true;
        self.overflowed = true;
        self.reset_event();
        self.line = Vec::new();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.data_lines = 0;
        self.event_type = None;
        self.id = None;
        // Release a buffer grown by one big event rather than keep it for the connection.
        if self.data.capacity() > 64 * 1024 {
            self.data = Vec::new();
        }
    }

    fn dispatch(&mut self, end: u64, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        if !self.skipping && self.data_lines > 0 {
            on_event(&SseEvent {
                data: &self.data,
                event_type: self.event_type.as_deref(),
                id: self.id.as_deref(),
                retry: self.retry,
                start: self.block_start,
                end,
            });
        }
        self.skipping = false;
        self.reset_event();
        self.block_start = end;
    }
}

/// Splits `name:value`, dropping one space after the colon; a line without a colon is a name.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr(b':', line) {
        Some(c) => {
            let value = &line[c + 1..];
            (&line[..c], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Owned {
        data: Vec<u8>,
        event_type: Option<Vec<u8>>,
        id: Option<Vec<u8>>,
        start: u64,
        end: u64,
    }

    fn parse_pieces(pieces: &[&[u8]], max: usize) -> (Vec<Owned>, EndState, SseParser) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        let mut push = |e: &SseEvent<'_>| {
            out.push(Owned {
                data: e.data.to_vec(),
                event_type: e.event_type.map(<[u8]>::to_vec),
                id: e.id.map(<[u8]>::to_vec),
                start: e.start,
                end: e.end,
            })
        };
        for piece in pieces {
            p.feed(piece, &mut push);
            assert!(p.carried_bytes() <= max);
        }
        let end = p.finish(&mut push);
        (out, end, p)
    }

    fn parse_every_split(body: &[u8]) -> Vec<Owned> {
        let (whole, end, _) = parse_pieces(&[body], DEFAULT_MAX_EVENT_BYTES);
        for i in 0..=body.len() {
            let (split, end2, _) = parse_pieces(&[&body[..i], &body[i..]], DEFAULT_MAX_EVENT_BYTES);
            assert_eq!(split, whole, "split at {i}");
            assert_eq!(end2, end, "split at {i}");
        }
        whole
    }

    #[test]
    fn line_endings_all_give_the_same_events() {
        for nl in ["\n", "\r\n", "\r"] {
            let body = format!("data: a{nl}data:b{nl}{nl}data:  c{nl}{nl}");
            let events = parse_every_split(body.as_bytes());
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].data, b"a\nb");
            assert_eq!(events[1].data, b" c");
            assert_eq!(events[1].end, body.len() as u64);
            assert_eq!(events[1].start, events[0].end);
        }
    }

    #[test]
    fn fields_comments_and_blocks_without_data() {
        let body =
            b": keep-alive\n\nevent: delta\nid: 7\nretry: 10\ndata\n\nevent: x\n\ndata: z \n\n";
        let events = parse_every_split(body);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, b"");
        assert_eq!(events[0].event_type.as_deref(), Some(&b"delta"[..]));
        assert_eq!(events[0].id.as_deref(), Some(&b"7"[..]));
        assert_eq!(events[1].data, b"z ");
        assert_eq!(events[1].event_type, None);
    }

    #[test]
    fn partial_event_at_end_is_reported_not_dispatched() {
        let (events, end, _) = parse_pieces(&[b"data: a\n\ndata: {\"x\""], 1024);
        assert_eq!(events.len(), 1);
        assert_eq!(
            end,
            EndState {
                mid_line: true,
                mid_event: true
            }
        );
        let (_, end, _) = parse_pieces(&[b"data: a\n"], 1024);
        assert_eq!(
            end,
            EndState {
                mid_line: false,
                mid_event: true
            }
        );
        let (_, end, _) = parse_pieces(&[b"data: a\n\r"], 1024);
        assert_eq!(end, EndState::default());
    }

    #[test]
    fn oversized_event_is_skipped_and_flagged() {
        let big = "x".repeat(100);
        let body = format!("data: a\n\ndata: {big}\ndata: more\n\ndata: b\n\n");
        for i in 0..=body.len() {
            let bytes = body.as_bytes();
            let (events, _, p) = parse_pieces(&[&bytes[..i], &bytes[i..]], 32);
            let datas: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
            assert_eq!(datas, vec![b"a".to_vec(), b"b".to_vec()], "split {i}");
            assert!(p.overflowed());
        }
    }

    #[test]
    fn partial_first_data_sees_unterminated_line() {
        let mut p = SseParser::default();
        p.feed(b"data: {\"err", |_| {});
        assert_eq!(p.partial_first_data(), Some(&b"{\"err"[..]));
        let mut p = SseParser::default();
        p.feed(b"dat", |_| {});
        assert_eq!(p.partial_first_data(), None);
    }
}
