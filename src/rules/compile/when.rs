//! Compiling `when` expressions: fields resolved, operators checked against the field's
//! type, literals typed, regexes compiled and CIDRs parsed.

use std::net::IpAddr;
use std::ops::Range;

use http::HeaderName;
use ipnet::IpNet;
use regex::RegexBuilder;

use super::{known_list, MAX_DEPTH};
use crate::rules::expr::{
    BoolField, BoolOp, Cmp, IntField, IpOp, Matcher, NumOp, StrField, StrOp, TagOp,
};
use crate::rules::input::BODY_FIELDS;
use crate::rules::tree::{join, one_of, Cx, Node, Obj};
use crate::rules::KnownNames;

const HEADS: &[&str] = &["field", "all", "any", "not", "always"];
const OPERATORS: &[&str] = &[
    "equals", "in", "prefix", "regex", "gt", "gte", "lt", "lte", "exists", "cidr", "contains",
];
/// Request fields a `when` can test; the body's follow (`BODY_FIELDS`).
const REQUEST_FIELDS: &[&str] = &[
    "method",
    "path",
    "header.<name>",
    "client_ip",
    "key.name",
    "key.team",
    "key.tags",
    "model",
];

pub(super) fn matcher(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    known: &KnownNames,
    depth: usize,
) -> Option<Matcher> {
    if depth > MAX_DEPTH {
        cx.err(
            &node.span(),
            path,
            format!("expression nested deeper than {MAX_DEPTH} levels"),
        );
        return None;
    }
    let obj = cx.table(node, path)?;
    let heads: Vec<&str> = HEADS.iter().copied().filter(|h| obj.has(h)).collect();
    match heads.as_slice() {
        [] => {
            if obj.is_empty() {
                cx.err(
                    &obj.span,
                    path,
                    format!("empty expression; expected {}", one_of(HEADS)),
                );
            } else if OPERATORS.iter().any(|op| obj.has(op)) {
                cx.err(&obj.span, path, "operator without `field`");
            } else {
                obj.finish(cx, path, HEADS);
            }
            None
        }
        [head] => compile_head(cx, obj, head, path, known, depth),
        [first, second, ..] => {
            cx.err(
                &obj.span,
                path,
                format!(
                    "`{first}` and `{second}` cannot share one table; nest them in `all` or `any`"
                ),
            );
            None
        }
    }
}

fn compile_head(
    cx: &mut Cx<'_>,
    mut obj: Obj<'_>,
    head: &str,
    path: &str,
    known: &KnownNames,
    depth: usize,
) -> Option<Matcher> {
    let node = obj.take(head)?;
    let hpath = join(path, head);
    match head {
        "all" | "any" => {
            obj.finish(cx, path, &[head]);
            let items = cx.array(node, &hpath)?;
            if items.is_empty() {
                cx.err(&node.span(), &hpath, "needs at least one expression");
                return None;
            }
            let mut compiled = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match matcher(cx, item, &format!("{hpath}[{i}]"), known, depth + 1) {
                    Some(m) => compiled.push(m),
                    None => ok = false,
                }
            }
            let compiled = compiled.into_boxed_slice();
            ok.then(|| {
                if head == "all" {
                    Matcher::All(compiled)
                } else {
                    Matcher::Any(compiled)
                }
            })
        }
        "not" => {
            obj.finish(cx, path, &[head]);
            matcher(cx, node, &hpath, known, depth + 1).map(|m| Matcher::Not(Box::new(m)))
        }
        "always" => {
            obj.finish(cx, path, &[head]);
            match cx.boolean(node, &hpath)? {
                true => Some(Matcher::Always),
                false => {
                    cx.err(
                        &node.span(),
                        &hpath,
                        "must be `true` (to disable a rule, delete it)",
                    );
                    None
                }
            }
        }
        _ => leaf(cx, obj, node, path, known),
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Str(StrField),
    Tags,
    Ip,
    Int(IntField),
    Temperature,
    Bool(BoolField),
}

impl Kind {
    fn operators(&self) -> &'static [&'static str] {
        match self {
            Kind::Str(_) => &["equals", "in", "prefix", "regex", "exists"],
            Kind::Tags => &["contains", "in", "exists"],
            Kind::Ip => &["cidr", "exists"],
            Kind::Int(_) | Kind::Temperature => {
                &["gt", "gte", "lt", "lte", "equals", "in", "exists"]
            }
            Kind::Bool(_) => &["equals", "exists"],
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Kind::Str(_) => "a string",
            Kind::Tags => "a set of tags",
            Kind::Ip => "an IP address",
            Kind::Int(_) => "an integer",
            Kind::Temperature => "a number",
            Kind::Bool(_) => "a boolean",
        }
    }
}

fn field_kind(name: &str) -> Result<Kind, String> {
    Ok(match name {
        "method" => Kind::Str(StrField::Method),
        "path" => Kind::Str(StrField::Path),
        "client_ip" => Kind::Ip,
        "key.name" => Kind::Str(StrField::KeyName),
        "key.team" => Kind::Str(StrField::KeyTeam),
        "key.tags" => Kind::Tags,
        "model" => Kind::Str(StrField::Model),
        "stream" => Kind::Bool(BoolField::Stream),
        "tools" => Kind::Bool(BoolField::Tools),
        "max_tokens" => Kind::Int(IntField::MaxTokens),
        "max_completion_tokens" => Kind::Int(IntField::MaxCompletionTokens),
        "n" => Kind::Int(IntField::N),
        "prompt_bytes" => Kind::Int(IntField::PromptBytes),
        "temperature" => Kind::Temperature,
        other => match other.strip_prefix("header.") {
            Some(header) => Kind::Str(StrField::Header(header_name(header)?)),
            None => {
                return Err(format!(
                    "unknown field `{other}`; expected {}",
                    one_of(&[REQUEST_FIELDS, BODY_FIELDS].concat())
                ))
            }
        },
    })
}

pub(super) fn header_name(name: &str) -> Result<HeaderName, String> {
    // `from_bytes` lower-cases, so `header.X-Team` and `header.x-team` are the same header.
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid HTTP header name"))
}

fn leaf(
    cx: &mut Cx<'_>,
    mut obj: Obj<'_>,
    field_node: &Node,
    path: &str,
    known: &KnownNames,
) -> Option<Matcher> {
    let ops: Vec<(&str, &Node)> = OPERATORS
        .iter()
        .filter_map(|op| obj.take(op).map(|node| (*op, node)))
        .collect();
    let mut expected = vec!["field"];
    expected.extend_from_slice(OPERATORS);
    obj.finish(cx, path, &expected);
    let fpath = join(path, "field");
    let field = cx.string(field_node, &fpath)?;
    let kind = match field_kind(field) {
        Ok(kind) => kind,
        Err(why) => {
            cx.err(&field_node.span(), &fpath, why);
            return None;
        }
    };
    let (op, node) = single_operator(cx, &obj.span, path, field, &kind, &ops)?;
    let opath = join(path, op);
    if !kind.operators().contains(&op) {
        cx.err(
            &node.span(),
            &opath,
            format!(
                "operator `{op}` does not apply to `{field}` ({}); expected {}",
                kind.describe(),
                one_of(kind.operators())
            ),
        );
        return None;
    }
    if op == "exists" {
        let want = cx.boolean(node, &opath)?;
        return Some(exists_matcher(kind, want));
    }
    operator_matcher(cx, kind, op, node, &opath, known)
}

/// An expression names exactly one operator.
fn single_operator<'n>(
    cx: &mut Cx<'_>,
    span: &Range<usize>,
    path: &str,
    field: &str,
    kind: &Kind,
    ops: &[(&'n str, &'n Node)],
) -> Option<(&'n str, &'n Node)> {
    match ops {
        [one] => Some(*one),
        [] => {
            cx.err(
                span,
                path,
                format!(
                    "missing operator for `{field}`; expected {}",
                    one_of(kind.operators())
                ),
            );
            None
        }
        [(a, _), (b, _), ..] => {
            cx.err(
                span,
                path,
                format!("one operator per expression (found `{a}` and `{b}`); combine expressions with `all`"),
            );
            None
        }
    }
}

fn exists_matcher(kind: Kind, want: bool) -> Matcher {
    match kind {
        Kind::Str(f) => Matcher::Str(f, StrOp::Exists(want)),
        Kind::Tags => Matcher::Tags(TagOp::Exists(want)),
        Kind::Ip => Matcher::Ip(IpOp::Exists(want)),
        Kind::Int(f) => Matcher::Int(f, NumOp::Exists(want)),
        Kind::Temperature => Matcher::Temperature(NumOp::Exists(want)),
        Kind::Bool(f) => Matcher::Bool(f, BoolOp::Exists(want)),
    }
}

/// The matcher of an operator other than `exists`, already checked to apply to the field.
fn operator_matcher(
    cx: &mut Cx<'_>,
    kind: Kind,
    op: &str,
    node: &Node,
    opath: &str,
    known: &KnownNames,
) -> Option<Matcher> {
    match kind {
        Kind::Str(f) => {
            let op = str_op(cx, op, node, opath, &f, known)?;
            Some(Matcher::Str(f, op))
        }
        Kind::Tags => match op {
            "contains" => Some(Matcher::Tags(TagOp::Contains(
                cx.string(node, opath)?.into(),
            ))),
            _ => Some(Matcher::Tags(TagOp::In(string_list(cx, node, opath)?))),
        },
        Kind::Ip => ip_matcher(cx, node, opath),
        Kind::Int(f) => {
            let int = |cx: &mut Cx<'_>, n: &Node, p: &str| cx.int(n, p).map(i128::from);
            Some(Matcher::Int(f, num_op(cx, op, node, opath, int)?))
        }
        Kind::Temperature => Some(Matcher::Temperature(num_op(
            cx,
            op,
            node,
            opath,
            |cx: &mut Cx<'_>, n: &Node, p: &str| cx.number(n, p),
        )?)),
        Kind::Bool(f) => Some(Matcher::Bool(f, BoolOp::Equals(cx.boolean(node, opath)?))),
    }
}

/// `cidr`: every network is checked, so one pass reports all the bad ones.
fn ip_matcher(cx: &mut Cx<'_>, node: &Node, opath: &str) -> Option<Matcher> {
    let mut nets = Vec::new();
    let mut ok = true;
    for (text, span) in cx.strings(node, opath)? {
        match parse_net(text) {
            Some(net) => nets.push(net),
            None => {
                cx.err(
                    &span,
                    opath,
                    format!(
                        "`{text}` is not an IP network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)"
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then(|| Matcher::Ip(IpOp::Cidr(nets.into())))
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn str_op(
    cx: &mut Cx<'_>,
    op: &str,
    node: &Node,
    path: &str,
    field: &StrField,
    known: &KnownNames,
) -> Option<StrOp> {
    let check = |cx: &mut Cx<'_>, value: &str, span: &Range<usize>| -> bool {
        match field {
            StrField::Model if !known.models.contains(value) => {
                cx.err(
                    span,
                    path,
                    format!(
                        "unknown model alias `{value}` (known: {})",
                        known_list(&known.models)
                    ),
                );
                false
            }
            StrField::Method
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                cx.err(
                    span,
                    path,
                    format!(
                        "`{value}`: methods are matched exactly and are upper case (e.g. `POST`)"
                    ),
                );
                false
            }
            _ => true,
        }
    };
    match op {
        "equals" => {
            let value = cx.string(node, path)?;
            check(cx, value, &node.span()).then(|| StrOp::Equals(value.into()))
        }
        "in" => {
            let items = cx.array(node, path)?;
            let list = string_list(cx, node, path)?;
            let mut ok = true;
            for (value, item) in list.iter().zip(items) {
                ok &= check(cx, value, &item.span());
            }
            ok.then_some(StrOp::In(list))
        }
        "prefix" => Some(StrOp::Prefix(cx.string(node, path)?.into())),
        _ => {
            let pattern = cx.string(node, path)?;
            // Bounded compiled size: a rule file cannot make the proxy allocate without limit.
            match RegexBuilder::new(pattern).size_limit(1 << 20).build() {
                Ok(re) => Some(StrOp::Regex(re)),
                Err(e) => {
                    let text = e.to_string();
                    let detail = text.lines().last().unwrap_or("").trim();
                    let detail = detail.strip_prefix("error: ").unwrap_or(detail);
                    cx.err(
                        &node.span(),
                        path,
                        format!("invalid regex `{pattern}`: {detail}"),
                    );
                    None
                }
            }
        }
    }
}

/// A non-empty array of strings.
fn string_list(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Box<[Box<str>]>> {
    let items = cx.array(node, path)?;
    if items.is_empty() {
        cx.err(&node.span(), path, "needs at least one value");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match cx.string(item, &format!("{path}[{i}]")) {
            Some(s) => out.push(Box::from(s)),
            None => ok = false,
        }
    }
    ok.then(|| out.into_boxed_slice())
}

fn num_op<T: Copy>(
    cx: &mut Cx<'_>,
    op: &str,
    node: &Node,
    path: &str,
    read: impl Fn(&mut Cx<'_>, &Node, &str) -> Option<T>,
) -> Option<NumOp<T>> {
    let cmp = match op {
        "gt" => Cmp::Gt,
        "gte" => Cmp::Gte,
        "lt" => Cmp::Lt,
        "lte" => Cmp::Lte,
        "equals" => return read(cx, node, path).map(NumOp::Equals),
        _ => {
            let items = cx.array(node, path)?;
            if items.is_empty() {
                cx.err(&node.span(), path, "needs at least one value");
                return None;
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(read(cx, item, &format!("{path}[{i}]")));
            }
            return out
                .into_iter()
                .collect::<Option<Vec<T>>>()
                .map(|v| NumOp::In(v.into()));
        }
    };
    read(cx, node, path).map(|v| NumOp::Cmp(cmp, v))
}
