//! Removes or replaces whole events in the byte stream the client receives, holding back only
//! the bytes of an event that is not complete yet.
//!
//! Offsets are absolute body positions. Everything before `emitted_upto` has been handed to the
//! caller; `held` is `[emitted_upto, stream_end)`. Edits always cover whole events that lie at or
//! after `emitted_upto` (an event already forwarded can no longer be changed).

use bytes::Bytes;

/// What the proxy sends for one body piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Forward the piece unchanged (the caller keeps its `Bytes`: zero copies).
    Passthrough,
    /// Forward these bytes instead (may be empty while an event is held back).
    Replace(Bytes),
}

#[derive(Debug)]
struct Edit {
    start: u64,
    end: u64,
    replacement: Option<Bytes>,
}

#[derive(Debug, Default)]
pub(crate) struct EventRewriter {
    emitted_upto: u64,
    held: Vec<u8>,
    edits: Vec<Edit>,
}

impl EventRewriter {
    /// Bytes held back.
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// Replaces `[start, end)` (a whole event) by `replacement` (`None` removes it). Returns false
    /// if part of it was already forwarded.
    pub fn edit(&mut self, start: u64, end: u64, replacement: Option<Bytes>) -> bool {
        let after_previous = self.edits.last().is_none_or(|e| e.end <= start);
        if start < self.emitted_upto || end < start || !after_previous {
            return false;
        }
        self.edits.push(Edit {
            start,
            end,
            replacement,
        });
        true
    }

    /// `piece` is the newest input, following the held bytes. Forwards everything before
    /// absolute `hold_from` (with edits applied) and holds the rest.
    pub fn apply(&mut self, piece: &[u8], hold_from: u64) -> BodyAction {
        let piece_start = self.emitted_upto + self.held.len() as u64;
        let stream_end = piece_start + piece.len() as u64;
        let hold_from = hold_from.max(self.emitted_upto).min(stream_end);
        if self.edits.is_empty() && self.held.is_empty() && hold_from == stream_end {
            self.emitted_upto = stream_end;
            return BodyAction::Passthrough;
        }
        let window = Window {
            held: &self.held,
            held_start: self.emitted_upto,
            piece,
            piece_start,
        };
        let mut out =
            Vec::with_capacity(usize::try_from(hold_from - self.emitted_upto).unwrap_or(0));
        let mut cursor = self.emitted_upto;
        for edit in self.edits.drain(..) {
            let end = edit.end.min(hold_from);
            if edit.start >= end {
                continue;
            }
            window.copy(&mut out, cursor, edit.start);
            if let Some(replacement) = &edit.replacement {
                out.extend_from_slice(replacement);
            }
            cursor = end;
        }
        window.copy(&mut out, cursor, hold_from);
        // Keep [hold_from, stream_end).
        if hold_from >= piece_start {
            self.held.clear();
            self.held
                .extend_from_slice(&piece[offset_in(hold_from - piece_start)..]);
        } else {
            self.held.drain(..offset_in(hold_from - self.emitted_upto));
            self.held.extend_from_slice(piece);
        }
        self.emitted_upto = hold_from;
        BodyAction::Replace(Bytes::from(out))
    }
}

/// The held bytes followed by the new piece, addressed by absolute offsets.
struct Window<'a> {
    held: &'a [u8],
    held_start: u64,
    piece: &'a [u8],
    piece_start: u64,
}

impl Window<'_> {
    fn copy(&self, out: &mut Vec<u8>, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let held_end = self.held_start + self.held.len() as u64;
        if from < held_end {
            let a = offset_in(from - self.held_start);
            let b = offset_in(to.min(held_end) - self.held_start);
            out.extend_from_slice(&self.held[a..b]);
        }
        if to > self.piece_start {
            let a = offset_in(from.max(self.piece_start) - self.piece_start);
            let b = offset_in(to - self.piece_start);
            out.extend_from_slice(&self.piece[a..b]);
        }
    }
}

/// Offsets inside held bytes or a piece always fit in memory.
fn offset_in(delta: u64) -> usize {
    usize::try_from(delta).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(a: BodyAction, piece: &[u8]) -> Vec<u8> {
        match a {
            BodyAction::Passthrough => piece.to_vec(),
            BodyAction::Replace(b) => b.to_vec(),
        }
    }

    #[test]
    fn passthrough_without_edits_or_holds() {
        let mut r = EventRewriter::default();
        assert_eq!(r.apply(b"abc", 3), BodyAction::Passthrough);
    }

    #[test]
    fn holds_then_removes_an_event_spanning_pieces() {
        let mut r = EventRewriter::default();
        let mut out = bytes_of(r.apply(b"keep|dr", 5), b"keep|dr");
        assert_eq!(out, b"keep|");
        assert!(r.edit(5, 10, None));
        out.extend(bytes_of(r.apply(b"op|tail", 14), b"op|tail"));
        assert_eq!(out, b"keep|tail");
        assert!(!r.edit(0, 1, None), "already forwarded");
    }

    #[test]
    fn replaces_an_event() {
        let mut r = EventRewriter::default();
        assert!(r.edit(2, 4, Some(Bytes::from_static(b"XYZ"))));
        assert_eq!(bytes_of(r.apply(b"ab..cd", 6), b""), b"abXYZcd");
    }
}
