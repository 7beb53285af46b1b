//! A rule file as a tree of located values, and the helpers the compiler walks it with.
//!
//! Why not `#[derive(Deserialize)]` + `deny_unknown_fields`: serde stops at the first
//! problem and cannot say which rule it was in. Walking a located tree lets one load report
//! **every** problem (unknown fields included) with its line, column, rule and field path.
//! The walker is just as strict: [`Obj::finish`] rejects every key nobody asked for.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::error::{rule_field, RuleIssue};

pub(crate) type Node = Spanned<Value>;

/// A TOML value with every nested key and value located.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Node>),
    Table(Table),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Table(pub Vec<(Spanned<String>, Node)>);

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Value::Table(Table(entries)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse a whole file; `Err((span, message))` on a TOML syntax error.
pub(crate) fn parse_document(text: &str) -> Result<Table, (Option<Range<usize>>, String)> {
    match toml::from_str::<Value>(text) {
        Ok(Value::Table(table)) => Ok(table),
        Ok(other) => Err((None, format!("expected a table, found {}", other.kind()))),
        Err(e) => {
            let mut message = e.message().trim().to_string();
            // Dates reach the visitor as a private map and fail inside toml: say it plainly.
            if message.contains("$__toml_private_datetime") {
                message = "dates and times are not supported in rule files".to_string();
            }
            Err((e.span(), message))
        }
    }
}

/// Where issues go, and the file and rule they are in.
pub(crate) struct Cx<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub rule: Option<String>,
    pub test: Option<String>,
    pub issues: &'a mut Vec<RuleIssue>,
}

impl Cx<'_> {
    pub fn line_col(&self, offset: usize) -> (Option<usize>, Option<usize>) {
        line_col(self.text, offset)
    }

    pub fn err(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = self.line_col(span.start);
        self.issues.push(RuleIssue {
            file: self.file.to_path_buf(),
            line,
            column,
            field: rule_field(self.rule.as_deref(), self.test.as_deref(), field),
            message: message.into(),
        });
    }

    pub fn table<'v>(&mut self, node: &'v Node, path: &str) -> Option<Obj<'v>> {
        match node.get_ref() {
            Value::Table(table) => Some(Obj::new(table, node.span())),
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected a table, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn string<'v>(&mut self, node: &'v Node, path: &str) -> Option<&'v str> {
        match node.get_ref() {
            Value::Str(s) => Some(s),
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.get_ref() {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        match node.get_ref() {
            Value::Int(i) => Some(*i),
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected an integer, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An integer or a float, as f64.
    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match node.get_ref() {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            Value::Float(_) => {
                self.err(&node.span(), path, "expected a finite number");
                None
            }
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn array<'v>(&mut self, node: &'v Node, path: &str) -> Option<&'v [Node]> {
        match node.get_ref() {
            Value::Array(items) => Some(items),
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!("expected an array, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A string, or an array of strings (each checked); `None` if any is not a string.
    pub fn strings<'v>(
        &mut self,
        node: &'v Node,
        path: &str,
    ) -> Option<Vec<(&'v str, Range<usize>)>> {
        match node.get_ref() {
            Value::Str(s) => Some(vec![(s.as_str(), node.span())]),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.string(item, &format!("{path}[{i}]")) {
                        Some(s) => out.push((s, item.span())),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            other => {
                self.err(
                    &node.span(),
                    path,
                    format!(
                        "expected a string or an array of strings, found {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }
}

pub(crate) use crate::diagnostics::line_col;

/// A table being read: every key must be taken, or [`Obj::finish`] reports it as unknown.
pub(crate) struct Obj<'v> {
    table: &'v Table,
    pub span: Range<usize>,
    used: Vec<bool>,
}

impl<'v> Obj<'v> {
    pub fn new(table: &'v Table, span: Range<usize>) -> Self {
        Obj {
            table,
            span,
            used: vec![false; table.0.len()],
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.0.iter().any(|(k, _)| k.get_ref() == key)
    }

    pub fn take(&mut self, key: &str) -> Option<&'v Node> {
        let index = self.table.0.iter().position(|(k, _)| k.get_ref() == key)?;
        self.used[index] = true;
        Some(&self.table.0[index].1)
    }

    /// Every entry, marking all as used (for free-form tables such as `headers`).
    pub fn entries(&mut self) -> &'v [(Spanned<String>, Node)] {
        self.used.iter_mut().for_each(|u| *u = true);
        &self.table.0
    }

    pub fn is_empty(&self) -> bool {
        self.table.0.is_empty()
    }

    /// Report every key not taken.
    pub fn finish(&self, cx: &mut Cx<'_>, path: &str, expected: &[&str]) {
        for ((key, _), used) in self.table.0.iter().zip(&self.used) {
            if !used {
                cx.err(
                    &key.span(),
                    path,
                    format!(
                        "unknown field `{}`; expected {}",
                        key.get_ref(),
                        one_of(expected)
                    ),
                );
            }
        }
    }
}

/// "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => "no fields".to_string(),
        1 => quoted[0].clone(),
        2 => format!("{} or {}", quoted[0], quoted[1]),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The value as JSON text (for body `set` actions and test expectations).
pub(crate) fn to_json(value: &Value) -> Result<serde_json::Value, &'static str> {
    Ok(match value {
        Value::Str(s) => serde_json::Value::String(s.clone()),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or("NaN and infinity are not valid JSON")?,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|n| to_json(n.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        Value::Table(t) => serde_json::Value::Object(
            t.0.iter()
                .map(|(k, v)| Ok((k.get_ref().clone(), to_json(v.get_ref())?)))
                .collect::<Result<_, &'static str>>()?,
        ),
    })
}
