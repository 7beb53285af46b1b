//! Compiled actions and how each one changes the outcome. Values the outcome needs are
//! prepared at load (raw JSON text, typed header names and values), so applying an action
//! is a copy into the outcome.

use http::{HeaderName, HeaderValue};

use super::input::{BodyFacts, Deny, RuleInput, RuleOutcome};

#[derive(Debug, Clone)]
pub(crate) enum Action {
    Deny(Deny),
    /// Set a top-level body key to a JSON value; `fact` mirrors it into the facts later rules
    /// see when the key is one they can match on.
    Set {
        key: Box<str>,
        raw: Box<str>,
        fact: Option<(NumField, Num)>,
    },
    Clamp {
        field: NumField,
        min: Option<Num>,
        max: Option<Num>,
        /// Set when the field is absent.
        default: Option<Num>,
    },
    Default {
        field: NumField,
        value: Num,
    },
    Route(Box<str>),
    Split(Split),
    SetRequestHeader(HeaderName, HeaderValue),
    RemoveRequestHeader(HeaderName),
    SetResponseHeader(HeaderName, HeaderValue),
    RemoveResponseHeader(HeaderName),
    RateLimitClass(Box<str>),
    Priority(i32),
    Tag(Box<str>),
}

/// The body parameters `clamp` and `default` work on (the ones whose value the rules know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumField {
    MaxTokens,
    MaxCompletionTokens,
    N,
    Temperature,
}

impl NumField {
    pub fn parse(name: &str) -> Option<NumField> {
        Some(match name {
            "max_tokens" => NumField::MaxTokens,
            "max_completion_tokens" => NumField::MaxCompletionTokens,
            "n" => NumField::N,
            "temperature" => NumField::Temperature,
            _ => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            NumField::MaxTokens => "max_tokens",
            NumField::MaxCompletionTokens => "max_completion_tokens",
            NumField::N => "n",
            NumField::Temperature => "temperature",
        }
    }

    pub fn is_integer(self) -> bool {
        self != NumField::Temperature
    }

    fn get(self, facts: &BodyFacts) -> Option<Num> {
        match self {
            NumField::MaxTokens => facts.max_tokens.map(Num::Int),
            NumField::MaxCompletionTokens => facts.max_completion_tokens.map(Num::Int),
            NumField::N => facts.n.map(Num::Int),
            NumField::Temperature => facts.temperature.map(Num::Float),
        }
    }

    fn put(self, facts: &mut BodyFacts, value: Num) {
        match (self, value) {
            (NumField::MaxTokens, Num::Int(v)) => facts.max_tokens = Some(v),
            (NumField::MaxCompletionTokens, Num::Int(v)) => facts.max_completion_tokens = Some(v),
            (NumField::N, Num::Int(v)) => facts.n = Some(v),
            (NumField::Temperature, v) => facts.temperature = Some(v.as_f64()),
            // The compiler types values by field; an integer field never gets a float.
            (_, Num::Float(_)) => {}
        }
    }
}

/// A typed body number: integer fields are u64 (like `RequestFacts`), temperature is f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(u64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(v) => v as f64,
            Num::Float(v) => v,
        }
    }

    /// JSON text. Floats use Rust's shortest round-trip form, which is valid JSON for every
    /// finite value (the only kind the compiler lets through).
    pub fn to_json(self) -> String {
        match self {
            Num::Int(v) => v.to_string(),
            Num::Float(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sticky {
    /// Hash the key name; the request id when there is no key.
    Key,
    /// Hash the request id: each request is an independent draw.
    Request,
}

#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// `(cluster, cumulative upper bound)`; the last bound is the total weight (> 0).
    pub arms: Box<[(Box<str>, u64)]>,
    pub total: u64,
    pub sticky: Sticky,
    /// From the rule name, so two splits over the same keys draw independently.
    pub salt: u64,
}

impl Split {
    pub fn pick(&self, input: &RuleInput<'_>) -> &str {
        let basis = match (self.sticky, input.key.name) {
            (Sticky::Key, Some(name)) => name,
            _ => input.request_id,
        };
        let bucket = stable_hash(self.salt, basis.as_bytes()) % self.total;
        for (cluster, upper) in self.arms.iter() {
            if bucket < *upper {
                return cluster;
            }
        }
        // Unreachable: the last upper bound is `total` and `bucket < total`.
        self.arms.last().map_or("", |(cluster, _)| cluster)
    }
}

/// FNV-1a then the SplitMix64 finaliser: stable across Rust versions and processes (unlike
/// `DefaultHasher`), so a key stays on its side of a canary across restarts and replicas.
/// Changing this function reshuffles every split.
pub(crate) fn stable_hash(salt: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether evaluation goes on after an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

impl Action {
    pub fn apply<'r>(
        &'r self,
        input: &RuleInput<'_>,
        facts: &mut BodyFacts,
        out: &mut RuleOutcome<'r>,
    ) -> Flow {
        match self {
            Action::Deny(deny) => {
                out.deny = Some(deny.clone());
                return Flow::Stop;
            }
            Action::Set { key, raw, fact } => {
                if let Some((field, value)) = fact {
                    field.put(facts, *value);
                }
                set_body(out, key, raw.to_string());
            }
            Action::Clamp {
                field,
                min,
                max,
                default,
            } => {
                let new = match (field.get(facts), default) {
                    (None, Some(default)) => Some(*default),
                    (None, None) => None,
                    (Some(current), _) => clamp(current, *min, *max),
                };
                if let Some(new) = new {
                    field.put(facts, new);
                    set_body(out, field.key(), new.to_json());
                }
            }
            Action::Default { field, value } => {
                if field.get(facts).is_none() {
                    field.put(facts, *value);
                    set_body(out, field.key(), value.to_json());
                }
            }
            Action::Route(cluster) => out.route_cluster = Some(cluster.to_string()),
            Action::Split(split) => out.route_cluster = Some(split.pick(input).to_string()),
            Action::SetRequestHeader(name, value) => {
                set_header(
                    &mut out.set_request_headers,
                    &mut out.remove_request_headers,
                    name,
                    value,
                );
            }
            Action::RemoveRequestHeader(name) => remove_header(
                &mut out.set_request_headers,
                &mut out.remove_request_headers,
                name,
            ),
            Action::SetResponseHeader(name, value) => set_header(
                &mut out.set_response_headers,
                &mut out.remove_response_headers,
                name,
                value,
            ),
            Action::RemoveResponseHeader(name) => remove_header(
                &mut out.set_response_headers,
                &mut out.remove_response_headers,
                name,
            ),
            Action::RateLimitClass(class) => out.rate_limit_class = Some(class.to_string()),
            Action::Priority(p) => out.priority = Some(*p),
            Action::Tag(tag) => {
                if !out.tags.iter().any(|t| t == &**tag) {
                    out.tags.push(tag.to_string());
                }
            }
        }
        Flow::Continue
    }
}

/// `Some(new)` only when the value changes, so an in-range value costs no rewrite.
fn clamp(current: Num, min: Option<Num>, max: Option<Num>) -> Option<Num> {
    let below = |bound: Num| match (current, bound) {
        (Num::Int(c), Num::Int(b)) => c < b,
        (c, b) => c.as_f64() < b.as_f64(),
    };
    let above = |bound: Num| match (current, bound) {
        (Num::Int(c), Num::Int(b)) => c > b,
        (c, b) => c.as_f64() > b.as_f64(),
    };
    match (min, max) {
        (Some(lo), _) if below(lo) => Some(lo),
        (_, Some(hi)) if above(hi) => Some(hi),
        _ => None,
    }
}

fn set_body(out: &mut RuleOutcome<'_>, key: &str, raw: String) {
    match out.body_sets.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = raw,
        None => out.body_sets.push((key.to_string(), raw)),
    }
}

fn set_header(
    sets: &mut Vec<(HeaderName, HeaderValue)>,
    removes: &mut Vec<HeaderName>,
    name: &HeaderName,
    value: &HeaderValue,
) {
    removes.retain(|n| n != name);
    match sets.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.clone(),
        None => sets.push((name.clone(), value.clone())),
    }
}

fn remove_header(
    sets: &mut Vec<(HeaderName, HeaderValue)>,
    removes: &mut Vec<HeaderName>,
    name: &HeaderName,
) {
    sets.retain(|(n, _)| n != name);
    if !removes.contains(name) {
        removes.push(name.clone());
    }
}
