//! The byte-exact rewrite: the original bytes plus a few non-overlapping edits, written into
//! one exact-size allocation.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::scan::*;

/// How usage reporting works out for a planned rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    /// `stream` is not `true` (after any `set_field("stream", ..)`): usage is in the JSON body.
    NotStreaming,
    /// The client sent `include_usage: true`: forward the usage chunk.
    ClientRequested,
    /// The proxy switched usage on: strip the usage chunk from the client stream.
    Injected,
    /// Streaming, usage neither requested by the client nor injected
    /// (`ensure_stream_usage(false)`, `stream_options` is not an object, or the
    /// caller overrode `stream_options` with `set_field`). Strip any usage chunk:
    /// vLLM/trtllm send one for `"stream_options":{}` too.
    NotRequested,
}

/// Edits to apply to a scanned body. Build with the chained methods, then
/// [`RewritePlan::apply`]. Nothing is added unless asked for; in particular
/// no field other than `stream_options` / `include_usage` is ever invented
/// (trtllm-serve rejects unknown fields).
#[derive(Debug, Clone)]
pub struct RewritePlan<'s, 'a> {
    pub(super) scan: &'s BodyScan<'a>,
    pub(super) ensure_stream_usage: bool,
    /// (key, raw JSON value); one entry per key, later calls win.
    pub(super) fields: Vec<(String, String)>,
}

pub(super) struct Edit<'p> {
    pub(super) span: Range<usize>,
    pub(super) text: Cow<'p, str>,
}

impl<'s, 'a> RewritePlan<'s, 'a> {
    pub fn new(scan: &'s BodyScan<'a>) -> Self {
        RewritePlan {
            scan,
            ensure_stream_usage: false,
            fields: Vec::new(),
        }
    }

    /// Replace the `model` string token with `served_name`, JSON-encoded.
    pub fn model(self, served_name: &str) -> Self {
        self.set_field("model", served_name)
    }

    /// When the effective `stream` is `true`, make the upstream report usage:
    /// add `"stream_options":{"include_usage":true}` if absent, add
    /// `include_usage:true` to an object without it, or overwrite a non-`true`
    /// `include_usage`. A non-object `stream_options` is left alone. Skipped
    /// if the caller sets `stream_options` itself with `set_field`.
    pub fn ensure_stream_usage(mut self, ensure: bool) -> Self {
        self.ensure_stream_usage = ensure;
        self
    }

    /// Set top-level `key` to `value`: every occurrence's value is replaced,
    /// or the member is appended when absent.
    pub fn set_field(self, key: &str, value: impl Into<Value>) -> Self {
        let raw = value.into().to_string();
        self.set_field_raw(key, raw)
    }

    /// Like [`set_field`](Self::set_field) with pre-serialised JSON.
    /// Precondition: `raw_json` is exactly one valid JSON value (checked in debug builds).
    pub fn set_field_raw(mut self, key: &str, raw_json: impl Into<String>) -> Self {
        let raw_json = raw_json.into();
        debug_assert!(
            serde_json::from_str::<&RawValue>(&raw_json).is_ok(),
            "set_field_raw({key:?}) got invalid JSON: {raw_json:?}"
        );
        match self.fields.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1 = raw_json,
            None => self.fields.push((key.to_owned(), raw_json)),
        }
        self
    }

    /// What happens to usage reporting with this plan.
    pub fn stream_usage(&self) -> StreamUsage {
        if self.effective_stream() != Some(true) {
            return StreamUsage::NotStreaming;
        }
        if self.field("stream_options").is_some() {
            return StreamUsage::NotRequested;
        }
        match &self.scan.facts.stream_options {
            Some(options) if options.include_usage == IncludeUsage::True => {
                StreamUsage::ClientRequested
            }
            Some(options) if !options.is_object => StreamUsage::NotRequested,
            _ if self.ensure_stream_usage => StreamUsage::Injected,
            _ => StreamUsage::NotRequested,
        }
    }

    /// Exact length of the body [`apply`](Self::apply) will produce.
    pub fn output_len(&self) -> usize {
        output_len(self.scan.body.len(), &self.edits())
    }

    /// Build the upstream body: one exact-size allocation (the edits applied as
    /// [`RequestBody::apply`](super::RequestBody::apply) applies them to a body it must copy).
    pub fn apply(&self) -> Bytes {
        let body = self.scan.body;
        Bytes::from(super::spare::assemble(
            body,
            0..body.len(),
            &self.body_edits(),
        ))
    }

    /// The edits [`apply`](Self::apply) makes, owned, for [`RequestBody::apply`](super::RequestBody::apply)
    /// (which may edit the body in place once the scan's borrow of it has ended).
    pub fn body_edits(&self) -> Vec<super::BodyEdit> {
        self.edits()
            .into_iter()
            .map(|edit| (edit.span, edit.text.into_owned().into_bytes()))
            .collect()
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(existing, _)| existing == key)
            .map(|(_, raw)| raw.as_str())
    }

    fn effective_stream(&self) -> Option<bool> {
        match self.field("stream") {
            Some(raw) => serde_json::from_str::<bool>(raw).ok(),
            None => self.scan.facts.stream,
        }
    }

    /// Sorted, non-overlapping edits. Inserts are empty spans; several inserts
    /// at the same offset keep their creation order (stable sort).
    fn edits(&self) -> Vec<Edit<'_>> {
        let scan = self.scan;
        let mut edits = Vec::new();
        let mut top_level_has_members = !scan.members.is_empty();
        let mut insert_member = |edits: &mut Vec<Edit<'_>>, text: String| {
            let text = if top_level_has_members {
                format!(",{text}")
            } else {
                text
            };
            top_level_has_members = true;
            edits.push(Edit {
                span: scan.facts.insert_at..scan.facts.insert_at,
                text: Cow::Owned(text),
            });
        };

        for (key, raw) in &self.fields {
            let before = edits.len();
            edits.extend(scan.spans_of(key).map(|span| Edit {
                span,
                text: Cow::Borrowed(raw.as_str()),
            }));
            if edits.len() == before {
                insert_member(&mut edits, format!("{}:{raw}", Value::from(key.as_str())));
            }
        }

        if self.ensure_stream_usage && self.stream_usage() == StreamUsage::Injected {
            match &scan.stream_options_layout {
                None => insert_member(
                    &mut edits,
                    r#""stream_options":{"include_usage":true}"#.to_owned(),
                ),
                Some(layout) => match &layout.include_usage_span {
                    Some(span) => edits.push(Edit {
                        span: span.clone(),
                        text: Cow::Borrowed("true"),
                    }),
                    None => edits.push(Edit {
                        span: layout.insert_at..layout.insert_at,
                        text: Cow::Borrowed(if layout.is_empty {
                            r#""include_usage":true"#
                        } else {
                            r#","include_usage":true"#
                        }),
                    }),
                },
            }
        }

        edits.sort_by_key(|edit| (edit.span.start, edit.span.end));
        edits
    }
}

pub(super) fn output_len(body_len: usize, edits: &[Edit<'_>]) -> usize {
    edits.iter().fold(body_len, |len, edit| {
        len - edit.span.len() + edit.text.len()
    })
}
