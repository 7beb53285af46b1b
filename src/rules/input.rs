//! What a rule sees about a request, and what evaluation decides. Plain data: the proxy fills
//! [`RuleInput`] from what it already parsed and applies [`RuleOutcome`] itself.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request as rules see it. Everything is borrowed; building one does not allocate.
#[derive(Debug, Clone, Copy)]
pub struct RuleInput<'a> {
    /// Upper case, as sent (`POST`).
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// `None` when unknown (e.g. a Unix socket listener).
    pub client_ip: Option<IpAddr>,
    /// The authenticated key; `KeyInfo::default()` when auth is off.
    pub key: KeyInfo<'a>,
    /// The public model alias the client asked for (before any rewrite).
    pub model: Option<&'a str>,
    pub body: BodyFacts,
    /// Hashed for `split` when there is no sticky value (no key, no header).
    pub request_id: &'a str,
}

/// The authenticated API key, never its secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyInfo<'a> {
    pub name: Option<&'a str>,
    pub team: Option<&'a str>,
    pub tags: &'a [String],
}

/// The body fields rules can test (`when`) and tests can set (`facts`): the one list.
pub(crate) const BODY_FIELDS: &[&str] = &[
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "tools",
    "prompt_bytes",
];

/// Body parameters the router already parsed (`routing::body::RequestFacts`), in the same
/// "present and well-typed, or `None`" convention. Copy: evaluation works on its own copy
/// and updates it as `set`/`clamp`/`default` actions run, so later rules see the new values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BodyFacts {
    pub stream: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u64>,
    pub temperature: Option<f64>,
    /// `tools` is a non-empty array.
    pub has_tools: bool,
    /// Raw byte length of `messages` + `prompt` + `input`.
    pub prompt_bytes: u64,
}

/// A `deny` action's answer; the proxy writes it as an OpenAI-shaped error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// 400..=599.
    pub status: u16,
    pub message: String,
    /// Machine-readable `[a-z0-9_]+`, for the error's `code`.
    pub code: String,
}

/// What the rules decided for one request. Empty (and allocation-free) when nothing matched.
///
/// Scalar decisions (`route_cluster`, `rate_limit_class`, `priority`) are last-writer-wins;
/// lists accumulate in rule order. Header lists are kept disjoint: a later `remove` of a
/// header cancels an earlier `set` of it and vice versa, so the proxy may apply removes and
/// sets in any order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleOutcome<'r> {
    /// Answer with this error instead of forwarding. Evaluation stopped at this rule.
    pub deny: Option<Deny>,
    /// `(top-level key, raw JSON value)` for `RewritePlan::set_field_raw`; one entry per key
    /// (a later action on the same key replaces the value), in first-set order.
    pub body_sets: Vec<(String, String)>,
    /// Route to this cluster instead of the model's own.
    pub route_cluster: Option<String>,
    pub set_request_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_request_headers: Vec<HeaderName>,
    pub set_response_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_response_headers: Vec<HeaderName>,
    pub rate_limit_class: Option<String>,
    pub priority: Option<i32>,
    /// For the access log and metrics labels; each at most once, from the bounded set
    /// [`RuleSet::declared_tags`](super::RuleSet::declared_tags).
    pub tags: Vec<String>,
    /// Names of the rules whose `when` matched, in evaluation order.
    pub matched: Vec<&'r str>,
}
