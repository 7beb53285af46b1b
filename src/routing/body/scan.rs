//! The scan: one validating pass over the body, its top-level members and the facts the
//! proxy acts on.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a request body was rejected. Every message is safe to show to the
/// client; map all variants to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is empty")]
    Empty,
    /// `detail` is serde_json's message and already ends with
    /// "at line L column C".
    #[error("request body is not valid JSON: {detail}")]
    InvalidJson {
        detail: String,
        line: usize,
        column: usize,
    },
    #[error("request body must be a JSON object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("'model' must be a string, found {found}")]
    ModelNotString { found: &'static str },
    #[error("'model' must not be empty")]
    EmptyModel,
    /// A member the endpoint requires is absent (Messages' `max_tokens`).
    #[error("{param}: Field required")]
    MissingField { param: &'static str },
    #[error("duplicate key '{key}' in request body")]
    DuplicateKey { key: &'static str },
    /// A field the proxy reads has the wrong JSON type. Upstreams coerce (`"n": "5"` becomes 5
    /// in pydantic's lax mode) while rules would see no value, so a cap could be bypassed; the
    /// OpenAI API refuses these too.
    #[error("'{param}' must be {expected}, found {found}")]
    InvalidType {
        param: &'static str,
        expected: &'static str,
        found: &'static str,
    },
}

impl BodyError {
    /// The request parameter at fault, for the OpenAI error `param` field.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            BodyError::Empty | BodyError::InvalidJson { .. } | BodyError::NotAnObject { .. } => {
                None
            }
            BodyError::MissingModel | BodyError::ModelNotString { .. } | BodyError::EmptyModel => {
                Some("model")
            }
            BodyError::DuplicateKey { key } | BodyError::MissingField { param: key } => Some(key),
            BodyError::InvalidType { param, .. } => Some(param),
        }
    }

    /// Stable machine-readable code for the OpenAI error `code` field.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Empty => "empty_body",
            BodyError::InvalidJson { .. } => "invalid_json",
            BodyError::NotAnObject { .. } => "not_an_object",
            BodyError::MissingModel => "missing_model",
            BodyError::ModelNotString { .. } | BodyError::EmptyModel => "invalid_model",
            BodyError::DuplicateKey { .. } => "duplicate_key",
            BodyError::MissingField { .. } => "missing_field",
            BodyError::InvalidType { .. } => "invalid_type",
        }
    }

    fn from_json(err: &serde_json::Error) -> Self {
        BodyError::InvalidJson {
            detail: err.to_string(),
            line: err.line(),
            column: err.column(),
        }
    }
}

/// What the client said about `stream_options.include_usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeUsage {
    /// No `include_usage` member (including `"stream_options":{}`).
    Absent,
    /// Literally `true`: the client asked for the usage chunk.
    True,
    /// Present with any other value (`false`, `null`, `1`, ...).
    NotTrue,
}

/// Facts about the top-level `stream_options` member.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptionsFacts {
    /// Byte span of the whole value.
    pub span: Range<usize>,
    /// `false` when the value is not a JSON object (left for the upstream to reject).
    pub is_object: bool,
    pub include_usage: IncludeUsage,
    /// vLLM extension; `Some` only when the value is a boolean.
    pub continuous_usage_stats: Option<bool>,
}

/// Owned facts about a request, cheap to keep in the per-request context.
/// Spans are byte ranges into the scanned body.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    /// Decoded `model` value (escapes resolved); never empty.
    pub model: String,
    /// Span of the whole `model` string token, quotes included.
    pub model_span: Range<usize>,
    /// `Some` only when `stream` is a boolean.
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptionsFacts>,
    /// `Some` only for non-negative integers that fit in u64.
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u64>,
    /// `Some` only for numbers.
    pub temperature: Option<f64>,
    /// `tools` is a non-empty array.
    pub has_tools: bool,
    /// `Some` only when `user` is a string.
    pub user: Option<String>,
    /// Raw byte length of `messages` + `prompt` + `input` + `system` (Anthropic's system
    /// prompt; all occurrences): a cheap proxy for prompt size.
    pub prompt_bytes: usize,
    /// Offset just after the last top-level value, before any whitespace and
    /// the closing `}`: where `,"key":value` can be inserted.
    pub insert_at: usize,
}

impl RequestFacts {
    /// Streaming with `stream_options.include_usage` literally `true`. In
    /// OpenAI semantics `{}` / absent / `false` mean "no usage chunk" even
    /// though vLLM and trtllm treat `{}` as on, so usage chunks must be
    /// stripped from the client response unless this is true.
    pub fn client_requested_usage(&self) -> bool {
        self.stream == Some(true)
            && self
                .stream_options
                .as_ref()
                .is_some_and(|options| options.include_usage == IncludeUsage::True)
    }
}

/// One top-level member: decoded key and borrowed raw value.
#[derive(Debug, Clone)]
pub(super) struct Member<'a> {
    pub(super) key: Cow<'a, str>,
    pub(super) value: &'a RawValue,
}

/// Where and how to add `include_usage` inside an object-valued `stream_options`.
#[derive(Debug, Clone)]
pub(super) struct StreamOptionsLayout {
    /// Offset after the last inner value, or just after `{` when empty.
    pub(super) insert_at: usize,
    pub(super) is_empty: bool,
    pub(super) include_usage_span: Option<Range<usize>>,
}

/// A validated request body with the facts the proxy needs.
#[derive(Debug, Clone)]
pub struct BodyScan<'a> {
    pub(super) body: &'a [u8],
    pub(super) members: Vec<Member<'a>>,
    pub(super) facts: RequestFacts,
    pub(super) stream_options_layout: Option<StreamOptionsLayout>,
}

impl<'a> BodyScan<'a> {
    /// Validates the whole body once and extracts the request facts.
    pub fn parse(body: &'a [u8]) -> Result<Self, BodyError> {
        let Some(first) = body.iter().copied().find(|b| !is_json_whitespace(*b)) else {
            return Err(BodyError::Empty);
        };
        if first != b'{' {
            // Distinguish "valid JSON of the wrong type" from garbage. Raw
            // values are skipped iteratively, so this cannot overflow the stack.
            return match serde_json::from_slice::<&RawValue>(body) {
                Ok(_) => Err(BodyError::NotAnObject {
                    found: json_kind(first),
                }),
                Err(err) => Err(BodyError::from_json(&err)),
            };
        }
        let members = parse_object(body).map_err(|err| BodyError::from_json(&err))?;
        let (facts, stream_options_layout) = extract_facts(body, &members)?;
        Ok(BodyScan {
            body,
            members,
            facts,
            stream_options_layout,
        })
    }

    pub fn facts(&self) -> &RequestFacts {
        &self.facts
    }

    pub fn into_facts(self) -> RequestFacts {
        self.facts
    }

    /// The scanned body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Raw JSON text of the last top-level member named `key` (decoded-key match).
    pub fn raw_value(&self, key: &str) -> Option<&'a str> {
        self.members
            .iter()
            .rev()
            .find(|member| member.key == key)
            .map(|member| member.value.get())
    }

    /// Decoded keys of all top-level members, in document order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.members.iter().map(|member| member.key.as_ref())
    }

    pub(super) fn spans_of<'s>(&'s self, key: &'s str) -> impl Iterator<Item = Range<usize>> + 's {
        self.members
            .iter()
            .filter(move |member| member.key == key)
            .filter_map(|member| span_in(self.body, member.value.get()))
    }
}

// ---------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------

pub(super) fn extract_facts(
    body: &[u8],
    members: &[Member<'_>],
) -> Result<(RequestFacts, Option<StreamOptionsLayout>), BodyError> {
    let mut model: Option<&RawValue> = None;
    let mut stream: Option<&RawValue> = None;
    let mut stream_options: Option<&RawValue> = None;
    let last_raw = |key: &str| {
        members
            .iter()
            .rev()
            .find(|member| member.key == key)
            .map(|member| member.value.get())
    };
    let mut prompt_bytes = 0usize;

    for member in members {
        let (slot, key) = match member.key.as_ref() {
            "model" => (&mut model, "model"),
            "stream" => (&mut stream, "stream"),
            "stream_options" => (&mut stream_options, "stream_options"),
            "messages" | "prompt" | "input" | "system" => {
                prompt_bytes = prompt_bytes.saturating_add(member.value.get().len());
                continue;
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(BodyError::DuplicateKey { key });
        }
        *slot = Some(member.value);
    }

    let model_raw = model.ok_or(BodyError::MissingModel)?;
    let model_text = model_raw.get();
    let model_name = decode_string(model_text).ok_or(BodyError::ModelNotString {
        found: json_kind(model_text.as_bytes().first().copied().unwrap_or(b'n')),
    })?;
    if model_name.is_empty() {
        return Err(BodyError::EmptyModel);
    }
    let model_span = span_in(body, model_text).ok_or_else(internal_span_error)?;

    let (stream_options, layout) = match stream_options {
        Some(raw) => {
            let (facts, layout) = scan_stream_options(body, raw.get())?;
            (Some(facts), layout)
        }
        None => (None, None),
    };

    let insert_at = match members.last() {
        Some(last) => {
            span_in(body, last.value.get())
                .ok_or_else(internal_span_error)?
                .end
        }
        // Unreachable (a model member exists), but keep it total: just after `{`.
        None => body.iter().position(|b| *b == b'{').map_or(0, |at| at + 1),
    };

    let facts = RequestFacts {
        model: model_name.into_owned(),
        model_span,
        stream: typed(stream.map(RawValue::get), "stream", "a boolean", parse_bool)?,
        stream_options,
        prompt_bytes,
        insert_at,
        ..typed_fields(last_raw)?
    };
    Ok((facts, layout))
}

pub(super) fn scan_stream_options(
    body: &[u8],
    raw: &str,
) -> Result<(StreamOptionsFacts, Option<StreamOptionsLayout>), BodyError> {
    let span = span_in(body, raw).ok_or_else(internal_span_error)?;
    if !raw.starts_with('{') {
        let facts = StreamOptionsFacts {
            span,
            is_object: false,
            include_usage: IncludeUsage::Absent,
            continuous_usage_stats: None,
        };
        return Ok((facts, None));
    }
    // Already validated by the top-level pass; re-scanning a small object.
    let inner = parse_object(raw.as_bytes()).map_err(|err| BodyError::from_json(&err))?;
    let mut include_usage: Option<&RawValue> = None;
    let mut continuous_usage_stats = None;
    for member in &inner {
        match member.key.as_ref() {
            "include_usage" if include_usage.is_some() => {
                return Err(BodyError::DuplicateKey {
                    key: "stream_options.include_usage",
                })
            }
            "include_usage" => include_usage = Some(member.value),
            "continuous_usage_stats" => continuous_usage_stats = parse_bool(member.value.get()),
            _ => {}
        }
    }
    let include_usage_span = match include_usage {
        Some(value) => Some(span_in(body, value.get()).ok_or_else(internal_span_error)?),
        None => None,
    };
    let insert_at = match inner.last() {
        Some(last) => {
            span_in(body, last.value.get())
                .ok_or_else(internal_span_error)?
                .end
        }
        None => span.start + 1,
    };
    let facts = StreamOptionsFacts {
        span,
        is_object: true,
        include_usage: match include_usage {
            None => IncludeUsage::Absent,
            Some(value) if value.get() == "true" => IncludeUsage::True,
            Some(_) => IncludeUsage::NotTrue,
        },
        continuous_usage_stats,
    };
    let layout = StreamOptionsLayout {
        insert_at,
        is_empty: inner.is_empty(),
        include_usage_span,
    };
    Ok((facts, Some(layout)))
}

/// Parse `json` as exactly one object, borrowing every member value.
pub(super) fn parse_object(json: &[u8]) -> Result<Vec<Member<'_>>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let members = deserializer.deserialize_map(MembersVisitor)?;
    deserializer.end()?;
    Ok(members)
}

pub(super) struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<Member<'de>>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(16);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value: &'de RawValue = map.next_value()?;
            members.push(Member { key, value });
        }
        Ok(members)
    }
}

/// Decodes a key, borrowing unless it contains escapes.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

pub(super) struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

/// Byte range of `part` inside `body`, if `part` was borrowed from it.
pub(super) fn span_in(body: &[u8], part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= body.len()).then_some(start..end)
}

/// Values from a successful borrowed parse always point into the body; this
/// only exists so that a broken invariant is an error instead of a panic.
pub(super) fn internal_span_error() -> BodyError {
    BodyError::InvalidJson {
        detail: "value outside request body".to_owned(),
        line: 0,
        column: 0,
    }
}

/// Decoded value of a raw JSON string token; `None` for other kinds.
pub(super) fn decode_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

pub(super) fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

const NON_NEGATIVE: &str = "a non-negative integer";

/// `None` for an absent or `null` field, the parsed value, or [`BodyError::InvalidType`].
fn typed<T>(
    raw: Option<&str>,
    param: &'static str,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, BodyError> {
    match raw {
        None | Some("null") => Ok(None),
        Some(raw) => parse(raw).map(Some).ok_or(BodyError::InvalidType {
            param,
            expected,
            found: found_kind(raw, expected),
        }),
    }
}

/// The informational fields rules read, typed strictly (last occurrence wins).
fn typed_fields<'a>(last_raw: impl Fn(&str) -> Option<&'a str>) -> Result<RequestFacts, BodyError> {
    Ok(RequestFacts {
        max_tokens: typed(
            last_raw("max_tokens"),
            "max_tokens",
            NON_NEGATIVE,
            parse_u64,
        )?,
        max_completion_tokens: typed(
            last_raw("max_completion_tokens"),
            "max_completion_tokens",
            NON_NEGATIVE,
            parse_u64,
        )?,
        n: typed(last_raw("n"), "n", NON_NEGATIVE, parse_u64)?,
        temperature: typed(
            last_raw("temperature"),
            "temperature",
            "a number",
            parse_f64,
        )?,
        has_tools: typed(last_raw("tools"), "tools", "an array", parse_array)?.unwrap_or(false),
        user: typed(last_raw("user"), "user", "a string", |raw| {
            decode_string(raw).map(Cow::into_owned)
        })?,
        model: String::new(),
        model_span: 0..0,
        stream: None,
        stream_options: None,
        prompt_bytes: 0,
        insert_at: 0,
    })
}

/// Like [`json_kind`], telling integers from other numbers.
fn found_kind(raw: &str, expected: &str) -> &'static str {
    match json_kind(raw.as_bytes().first().copied().unwrap_or(b'n')) {
        "number" if raw.contains(['.', 'e', 'E']) => "non-integer number",
        "number" if raw.starts_with('-') => "negative integer",
        "number" if expected == NON_NEGATIVE => "out-of-range integer",
        "number" => "integer",
        kind => kind,
    }
}

/// Integer literals only: `4000.0` and `4e3` are numbers, but not integers.
pub(super) fn parse_u64(raw: &str) -> Option<u64> {
    if raw.contains(['.', 'e', 'E']) {
        return None;
    }
    serde_json::from_str::<u64>(raw).ok()
}

/// `Some(non-empty)` for arrays.
fn parse_array(raw: &str) -> Option<bool> {
    raw.starts_with('[').then(|| is_non_empty_array(raw))
}

pub(super) fn parse_f64(raw: &str) -> Option<f64> {
    let first = *raw.as_bytes().first()?;
    if first == b'-' || first.is_ascii_digit() {
        serde_json::from_str::<f64>(raw).ok()
    } else {
        None
    }
}

pub(super) fn is_non_empty_array(raw: &str) -> bool {
    raw.strip_prefix('[').is_some_and(|rest| {
        !rest
            .trim_start_matches(is_json_whitespace_char)
            .starts_with(']')
    })
}

pub(super) fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

pub(super) fn is_json_whitespace_char(ch: char) -> bool {
    matches!(ch, ' ' | '\t' | '\n' | '\r')
}

/// Name of the JSON kind starting with `first`, for error messages.
pub(super) fn json_kind(first: u8) -> &'static str {
    match first {
        b'{' => "object",
        b'[' => "array",
        b'"' => "string",
        b't' | b'f' => "boolean",
        b'n' => "null",
        _ => "number",
    }
}
