//! Compiled `when` expressions and their evaluation. Everything a match needs was prepared
//! at load (regexes compiled, CIDRs parsed, header names lower-cased, numbers typed), so a
//! match never allocates.

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;

use super::input::{BodyFacts, RuleInput};

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Always,
    All(Box<[Matcher]>),
    Any(Box<[Matcher]>),
    Not(Box<Matcher>),
    Str(StrField, StrOp),
    Tags(TagOp),
    Ip(IpOp),
    Int(IntField, NumOp<i128>),
    Temperature(NumOp<f64>),
    Bool(BoolField, BoolOp),
}

#[derive(Debug, Clone)]
pub(crate) enum StrField {
    Method,
    Path,
    Header(HeaderName),
    KeyName,
    KeyTeam,
    Model,
}

#[derive(Debug, Clone)]
pub(crate) enum StrOp {
    Exists(bool),
    Equals(Box<str>),
    In(Box<[Box<str>]>),
    Prefix(Box<str>),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub(crate) enum TagOp {
    /// The key has at least one tag.
    Exists(bool),
    Contains(Box<str>),
    /// Any of the key's tags is in the list.
    In(Box<[Box<str>]>),
}

#[derive(Debug, Clone)]
pub(crate) enum IpOp {
    Exists(bool),
    Cidr(Box<[IpNet]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntField {
    MaxTokens,
    MaxCompletionTokens,
    N,
    PromptBytes,
}

impl IntField {
    fn get(self, facts: &BodyFacts) -> Option<u64> {
        match self {
            IntField::MaxTokens => facts.max_tokens,
            IntField::MaxCompletionTokens => facts.max_completion_tokens,
            IntField::N => facts.n,
            IntField::PromptBytes => Some(facts.prompt_bytes),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Debug, Clone)]
pub(crate) enum NumOp<T> {
    Exists(bool),
    Equals(T),
    In(Box<[T]>),
    Cmp(Cmp, T),
}

impl<T: PartialOrd + Copy> NumOp<T> {
    fn test(&self, value: Option<T>) -> bool {
        match (self, value) {
            (NumOp::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (NumOp::Equals(x), Some(v)) => v == *x,
            (NumOp::In(xs), Some(v)) => xs.contains(&v),
            (NumOp::Cmp(Cmp::Gt, x), Some(v)) => v > *x,
            (NumOp::Cmp(Cmp::Gte, x), Some(v)) => v >= *x,
            (NumOp::Cmp(Cmp::Lt, x), Some(v)) => v < *x,
            (NumOp::Cmp(Cmp::Lte, x), Some(v)) => v <= *x,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolField {
    Stream,
    Tools,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum BoolOp {
    Exists(bool),
    Equals(bool),
}

impl StrOp {
    /// Every operator except `Exists`, which callers handle (it needs no value).
    fn test(&self, value: &str) -> bool {
        match self {
            StrOp::Exists(_) => true,
            StrOp::Equals(x) => value == &**x,
            StrOp::In(xs) => xs.iter().any(|x| value == &**x),
            StrOp::Prefix(p) => value.starts_with(&**p),
            StrOp::Regex(re) => re.is_match(value),
        }
    }

    fn test_opt(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (StrOp::Exists(want), v) => v.is_some() == *want,
            (_, None) => false,
            (op, Some(v)) => op.test(v),
        }
    }
}

impl Matcher {
    /// `facts` is the body as earlier rules left it.
    pub fn matches(&self, input: &RuleInput<'_>, facts: &BodyFacts) -> bool {
        match self {
            Matcher::Always => true,
            Matcher::All(items) => items.iter().all(|m| m.matches(input, facts)),
            Matcher::Any(items) => items.iter().any(|m| m.matches(input, facts)),
            Matcher::Not(inner) => !inner.matches(input, facts),
            Matcher::Str(StrField::Header(name), op) => match op {
                StrOp::Exists(want) => input.headers.contains_key(name) == *want,
                // A repeated header matches when any of its values does. Values that are
                // not UTF-8 match nothing but `exists`.
                op => input
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|v| std::str::from_utf8(v.as_bytes()).is_ok_and(|s| op.test(s))),
            },
            Matcher::Str(field, op) => {
                let value = match field {
                    StrField::Method => Some(input.method),
                    StrField::Path => Some(input.path),
                    StrField::KeyName => input.key.name,
                    StrField::KeyTeam => input.key.team,
                    StrField::Model => input.model,
                    StrField::Header(_) => None, // handled above
                };
                op.test_opt(value)
            }
            Matcher::Tags(op) => {
                let tags = input.key.tags;
                match op {
                    TagOp::Exists(want) => tags.is_empty() != *want,
                    TagOp::Contains(t) => tags.iter().any(|x| x.as_str() == &**t),
                    TagOp::In(ts) => tags.iter().any(|x| ts.iter().any(|t| x.as_str() == &**t)),
                }
            }
            Matcher::Ip(op) => match (op, input.client_ip) {
                (IpOp::Exists(want), ip) => ip.is_some() == *want,
                (IpOp::Cidr(_), None) => false,
                (IpOp::Cidr(nets), Some(ip)) => {
                    let ip = canonical(ip);
                    nets.iter().any(|net| net.contains(&ip))
                }
            },
            Matcher::Int(field, op) => op.test(field.get(facts).map(i128::from)),
            Matcher::Temperature(op) => op.test(facts.temperature),
            Matcher::Bool(BoolField::Stream, op) => match op {
                BoolOp::Exists(want) => facts.stream.is_some() == *want,
                BoolOp::Equals(want) => facts.stream == Some(*want),
            },
            Matcher::Bool(BoolField::Tools, BoolOp::Exists(want) | BoolOp::Equals(want)) => {
                facts.has_tools == *want
            }
        }
    }
}

/// A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; match them as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
