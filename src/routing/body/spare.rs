//! The request body as the rewrite receives it: Pingora's one piece as it came, or pieces
//! joined into one buffer with room to spare before and after the body. In the joined case the
//! rewrite's few edits move only the bytes outside the longest unedited run, in place, instead
//! of copying the whole body again: a 1 MiB prompt's `model` edit moves ~100 bytes, not 1 MiB
//! (the copy was a fifth of the 1 MiB prompt's instructions).

use std::ops::Range;

use bytes::Bytes;

/// Room before a joined body: edits before its longest run may grow them by this much.
pub const HEADROOM: usize = 4096;
/// Room after it, for the edits after the longest run (`stream_options` added at the end).
pub const TAILROOM: usize = 4096;

/// Bodies from this size get the room (it is then at most an eighth of the body).
pub const MIN_SPARE_BODY: usize = 64 * 1024;

/// One edit of the body: the span it replaces (empty: an insert) and what goes there.
pub type BodyEdit = (Range<usize>, Vec<u8>);

/// A body joined from pieces, `buf[start..]`, in an allocation with spare room around it.
#[derive(Debug)]
pub struct SpareBody {
    buf: Vec<u8>,
    start: usize,
}

impl SpareBody {
    /// Room for a `len`-byte body (the pieces' sum, already read: never a declared length).
    /// Bodies under [`MIN_SPARE_BODY`] get no room (their copy is cheap, and 8 KiB each
    /// would weigh on many small open requests): they are edited in place only when the
    /// edits do not grow them.
    pub fn with_capacity(len: usize) -> SpareBody {
        if len < MIN_SPARE_BODY {
            SpareBody::with_room(len, 0, 0)
        } else {
            SpareBody::with_room(len, HEADROOM, TAILROOM)
        }
    }

    fn with_room(len: usize, head: usize, tail: usize) -> SpareBody {
        let mut buf = Vec::with_capacity(head + len + tail);
        buf.resize(head, 0);
        SpareBody { buf, start: head }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The body as it is, without a copy.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf).slice(self.start..)
    }

    /// The body with `edits` (sorted, non-overlapping spans of the body) applied. The longest
    /// unedited run stays where it is; what lies before it is rebuilt into the head room,
    /// what lies after into the tail room. When that does not fit, or would move more than
    /// half the body, one fresh exact-size copy is made instead (as for a one-piece body).
    pub fn apply(mut self, edits: &[BodyEdit]) -> Bytes {
        let len = self.buf.len() - self.start;
        let (first_after, run) = longest_run(len, edits);
        let moved = len - run.len();
        if moved > len / 2 {
            return Bytes::from(assemble(self.as_slice(), 0..len, edits));
        }
        let (before, after) = edits.split_at(first_after);
        let prefix = assemble(self.as_slice(), 0..run.start, before);
        let suffix = assemble(self.as_slice(), run.end..len, after);
        let run_start = self.start + run.start;
        let run_end = self.start + run.end;
        let new_end = run_end + suffix.len();
        let Some(new_start) = run_start.checked_sub(prefix.len()) else {
            return Bytes::from(assemble(self.as_slice(), 0..len, edits));
        };
        if new_end > self.buf.capacity() {
            return Bytes::from(assemble(self.as_slice(), 0..len, edits));
        }
        // Within capacity: no reallocation, the run is not moved.
        self.buf.resize(new_end, 0);
        self.buf[run_end..new_end].copy_from_slice(&suffix);
        self.buf[new_start..run_start].copy_from_slice(&prefix);
        Bytes::from(self.buf).slice(new_start..new_end)
    }
}

/// The body a rewrite starts from.
#[derive(Debug)]
pub enum RequestBody {
    /// One piece, shared with Pingora's read: edits make one exact-size copy.
    Whole(Bytes),
    Spare(SpareBody),
}

impl RequestBody {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            RequestBody::Whole(bytes) => bytes,
            RequestBody::Spare(spare) => spare.as_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            RequestBody::Whole(bytes) => bytes,
            RequestBody::Spare(spare) => spare.into_bytes(),
        }
    }

    /// The upstream body: this body with `edits` applied (see [`SpareBody::apply`]).
    pub fn apply(self, edits: &[BodyEdit]) -> Bytes {
        match self {
            RequestBody::Whole(bytes) if edits.is_empty() => bytes,
            RequestBody::Whole(bytes) => Bytes::from(assemble(&bytes, 0..bytes.len(), edits)),
            RequestBody::Spare(spare) => spare.apply(edits),
        }
    }
}

/// The longest run of `0..len` no edit touches, and the index of the first edit after it.
fn longest_run(len: usize, edits: &[BodyEdit]) -> (usize, Range<usize>) {
    let mut best = (0, 0..0);
    let mut cursor = 0;
    for (i, (span, _)) in edits.iter().enumerate() {
        if span.start.saturating_sub(cursor) > best.1.len() {
            best = (i, cursor..span.start);
        }
        cursor = span.end;
    }
    if len.saturating_sub(cursor) > best.1.len() {
        best = (edits.len(), cursor..len);
    }
    best
}

/// `body[range]` with the `edits` inside it applied, into a new exact-size buffer.
pub(super) fn assemble(body: &[u8], range: Range<usize>, edits: &[BodyEdit]) -> Vec<u8> {
    let size = edits.iter().fold(range.len(), |size, (span, text)| {
        size - span.len() + text.len()
    });
    let mut out = Vec::with_capacity(size);
    let mut cursor = range.start;
    for (span, text) in edits {
        out.extend_from_slice(&body[cursor..span.start]);
        out.extend_from_slice(text);
        cursor = span.end;
    }
    out.extend_from_slice(&body[cursor..range.end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spare(body: &[u8], head: usize, tail: usize) -> SpareBody {
        let mut spare = SpareBody::with_room(body.len(), head, tail);
        let (a, b) = body.split_at(body.len() / 2);
        spare.extend_from_slice(a);
        spare.extend_from_slice(b);
        spare
    }

    /// Sorted, non-overlapping edits from arbitrary cut points.
    fn edits_of(len: usize, cuts: Vec<(usize, usize, Vec<u8>)>) -> Vec<BodyEdit> {
        let mut cuts: Vec<_> = cuts
            .into_iter()
            .map(|(a, n, text)| {
                let start = a % (len + 1);
                (start, (start + n % 4).min(len), text)
            })
            .collect();
        cuts.sort_by_key(|c| (c.0, c.1));
        let mut edits: Vec<BodyEdit> = Vec::new();
        let mut cursor = 0;
        for (start, end, text) in cuts {
            if start >= cursor {
                edits.push((start..end, text));
                cursor = end;
            }
        }
        edits
    }

    proptest! {
        #[test]
        fn in_place_equals_a_fresh_copy(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(
                (any::<usize>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 0..24)),
                0..4,
            ),
            head in 0usize..40,
            tail in 0usize..40,
        ) {
            let edits = edits_of(body.len(), cuts);
            let expected = assemble(&body, 0..body.len(), &edits);
            prop_assert_eq!(&spare(&body, head, tail).apply(&edits)[..], &expected[..]);
            prop_assert_eq!(
                &RequestBody::Whole(Bytes::from(body.clone())).apply(&edits)[..],
                &expected[..]
            );
        }
    }

    #[test]
    fn a_model_edit_leaves_the_long_run_in_place() {
        let body = format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            "1,".repeat(50_000) + "1"
        );
        let spare = spare(body.as_bytes(), HEADROOM, TAILROOM);
        assert!(body.len() >= MIN_SPARE_BODY);
        let run_at = spare.as_slice()[20..].as_ptr();
        let edits = vec![(9..12, br#""served-model-name""#.to_vec())];
        let out = spare.apply(&edits);
        assert_eq!(out, body.replacen(r#""m""#, r#""served-model-name""#, 1));
        // The run after the edit was not copied: it is still at its address.
        assert_eq!(out[9 + 19 + 8..].as_ptr(), run_at);
    }

    #[test]
    fn small_bodies_get_no_room() {
        let small = SpareBody::with_capacity(1000);
        assert_eq!((small.start, small.buf.capacity()), (0, 1000));
        let large = SpareBody::with_capacity(MIN_SPARE_BODY);
        assert_eq!(large.start, HEADROOM);
        assert!(large.buf.capacity() >= HEADROOM + MIN_SPARE_BODY + TAILROOM);
    }

    #[test]
    fn no_room_falls_back_to_a_copy() {
        let body = br#"{"model":"m","x":1234567890}"#;
        let edits = vec![(9..12, br#""a-much-longer-name""#.to_vec())];
        let out = spare(body, 0, 0).apply(&edits);
        assert_eq!(
            &out[..],
            br#"{"model":"a-much-longer-name","x":1234567890}"#
        );
    }
}
