//! Load-time checking and compilation of `[[rules]]` into matchers and actions. Every
//! problem is recorded (with file, line, rule and field) and compilation goes on, so one
//! load reports them all.

use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use regex::RegexBuilder;

use super::action::{stable_hash, Action, Num, NumField, Split, Sticky};
use super::expr::{BoolField, BoolOp, Cmp, IntField, IpOp, Matcher, NumOp, StrField, StrOp, TagOp};
use super::input::Deny;
use super::testing::{self, TestCase};
use super::tree::{self, join, one_of, Cx, Node, Obj, Value};
use super::{KnownNames, RuleIssue};

/// How deep `all` / `any` / `not` may nest: far more than a readable rule needs, and it
/// bounds the recursion of both compilation and evaluation.
pub(crate) const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub name: Box<str>,
    pub file: Arc<Path>,
    pub line: usize,
    pub when: Matcher,
    pub actions: Box<[Action]>,
    pub stop: bool,
}

/// Everything one file defines. `rules` holds only the rules that compiled cleanly.
#[derive(Default)]
pub(crate) struct FileOutput {
    pub rules: Vec<Rule>,
    /// `(name, span of the name)` of every named rule, valid or not, for the duplicate check.
    pub names: Vec<(String, Range<usize>)>,
    pub tests: Vec<TestCase>,
}

pub(crate) fn compile_file(
    file: &Path,
    text: &str,
    known: &KnownNames,
    issues: &mut Vec<RuleIssue>,
) -> FileOutput {
    let mut cx = Cx {
        file,
        text,
        rule: None,
        test: None,
        issues,
    };
    let mut out = FileOutput::default();
    let document = match tree::parse_document(text) {
        Ok(document) => document,
        Err((span, message)) => {
            cx.err(&span.unwrap_or(usize::MAX..usize::MAX), "", message);
            return out;
        }
    };
    let mut top = Obj::new(&document, 0..0);
    let rules = top.take("rules");
    let tests = top.take("tests");
    top.finish(&mut cx, "", &["rules", "tests"]);
    let file_arc: Arc<Path> = Arc::from(file);
    if let Some(rules) = rules.and_then(|n| cx.array(n, "rules")) {
        for (index, node) in rules.iter().enumerate() {
            cx.rule = None;
            if let Some(rule) = compile_rule(&mut cx, node, index, known, &file_arc, &mut out) {
                out.rules.push(rule);
            }
        }
    }
    if let Some(tests) = tests.and_then(|n| cx.array(n, "tests")) {
        for (index, node) in tests.iter().enumerate() {
            cx.test = None;
            if let Some(test) = testing::parse_test(&mut cx, node, index, known) {
                out.tests.push(test);
            }
        }
    }
    cx.test = None;
    out
}

fn compile_rule(
    cx: &mut Cx<'_>,
    node: &Node,
    index: usize,
    known: &KnownNames,
    file: &Arc<Path>,
    out: &mut FileOutput,
) -> Option<Rule> {
    let prefix = format!("rules[{index}]");
    let mut obj = cx.table(node, &prefix)?;
    let name = match obj.take("name") {
        Some(n) => cx.string(n, &join(&prefix, "name")).and_then(|name| {
            match check_name(name) {
                Ok(()) => Some((name, n.span())),
                Err(why) => {
                    cx.err(&n.span(), &join(&prefix, "name"), why);
                    None
                }
            }
        }),
        None => {
            cx.err(&obj.span, &prefix, "missing field `name`");
            None
        }
    };
    // Once the rule has a name, messages say `rule `x`: when…` instead of `rules[3].when…`.
    let base = match &name {
        Some((name, span)) => {
            cx.rule = Some(name.to_string());
            out.names.push((name.to_string(), span.clone()));
            String::new()
        }
        None => prefix,
    };
    let issues_before = cx.issues.len();
    if let Some(d) = obj.take("description") {
        cx.string(d, &join(&base, "description"));
    }
    let when = match obj.take("when") {
        Some(w) => matcher(cx, w, &join(&base, "when"), known, 0),
        None => {
            cx.err(
                &obj.span,
                &base,
                "missing field `when` (use `when = { always = true }` to match every request)",
            );
            None
        }
    };
    let mut actions = Vec::new();
    if let Some(list) = obj.take("actions") {
        let path = join(&base, "actions");
        if let Some(items) = cx.array(list, &path) {
            let rule_name = name.as_ref().map_or("", |(n, _)| *n);
            for (i, item) in items.iter().enumerate() {
                let apath = format!("{path}[{i}]");
                if let Some(action) = compile_action(cx, item, &apath, known, rule_name) {
                    if matches!(actions.last(), Some(Action::Deny(_))) {
                        cx.err(
                            &item.span(),
                            &apath,
                            "unreachable: `deny` ends evaluation, so it must be the last action",
                        );
                    }
                    actions.push(action);
                }
            }
        }
    }
    let stop = match obj.take("then") {
        Some(t) => match cx.string(t, &join(&base, "then")) {
            Some("continue") => false,
            Some("stop") => true,
            Some(other) => {
                cx.err(
                    &t.span(),
                    &join(&base, "then"),
                    format!("unknown value `{other}`; expected `continue` or `stop`"),
                );
                false
            }
            None => false,
        },
        None => false,
    };
    obj.finish(cx, &base, &["name", "description", "when", "actions", "then"]);
    let (name, name_span) = name?;
    let when = when?;
    if cx.issues.len() != issues_before {
        return None;
    }
    Some(Rule {
        name: name.into(),
        file: file.clone(),
        line: cx.line_col(name_span.start).0.unwrap_or(0),
        when,
        actions: actions.into(),
        stop,
    })
}

/// Rule names appear in access logs: keep them short and printable.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".to_string());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "`{name}` may only contain letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `when`

const HEADS: &[&str] = &["field", "all", "any", "not", "always"];
const OPERATORS: &[&str] = &[
    "equals", "in", "prefix", "regex", "gt", "gte", "lt", "lte", "exists", "cidr", "contains",
];
const FIELDS: &[&str] = &[
    "method",
    "path",
    "header.<name>",
    "client_ip",
    "key.name",
    "key.team",
    "key.tags",
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "tools",
    "prompt_bytes",
];

pub(crate) fn matcher(
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
    let mut obj = cx.table(node, path)?;
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
                    cx.err(&node.span(), &hpath, "must be `true` (to disable a rule, delete it)");
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
            Kind::Int(_) | Kind::Temperature => &["gt", "gte", "lt", "lte", "equals", "in", "exists"],
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
                    one_of(FIELDS)
                ))
            }
        },
    })
}

fn header_name(name: &str) -> Result<HeaderName, String> {
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
    let (op, node) = match ops.as_slice() {
        [one] => *one,
        [] => {
            cx.err(
                &obj.span,
                path,
                format!(
                    "missing operator for `{field}`; expected {}",
                    one_of(kind.operators())
                ),
            );
            return None;
        }
        [(a, _), (b, _), ..] => {
            cx.err(
                &obj.span,
                path,
                format!("one operator per expression (found `{a}` and `{b}`); combine expressions with `all`"),
            );
            return None;
        }
    };
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
        return Some(match kind {
            Kind::Str(f) => Matcher::Str(f, StrOp::Exists(want)),
            Kind::Tags => Matcher::Tags(TagOp::Exists(want)),
            Kind::Ip => Matcher::Ip(IpOp::Exists(want)),
            Kind::Int(f) => Matcher::Int(f, NumOp::Exists(want)),
            Kind::Temperature => Matcher::Temperature(NumOp::Exists(want)),
            Kind::Bool(f) => Matcher::Bool(f, BoolOp::Exists(want)),
        });
    }
    match kind {
        Kind::Str(f) => {
            let op = str_op(cx, op, node, &opath, &f, known)?;
            Some(Matcher::Str(f, op))
        }
        Kind::Tags => match op {
            "contains" => Some(Matcher::Tags(TagOp::Contains(cx.string(node, &opath)?.into()))),
            _ => Some(Matcher::Tags(TagOp::In(string_list(cx, node, &opath)?))),
        },
        Kind::Ip => {
            let mut nets = Vec::new();
            let mut ok = true;
            for (text, span) in cx.strings(node, &opath)? {
                match parse_net(text) {
                    Some(net) => nets.push(net),
                    None => {
                        cx.err(
                            &span,
                            &opath,
                            format!("`{text}` is not an IP network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)"),
                        );
                        ok = false;
                    }
                }
            }
            ok.then(|| Matcher::Ip(IpOp::Cidr(nets.into())))
        }
        Kind::Int(f) => {
            let int = |cx: &mut Cx<'_>, n: &Node, p: &str| cx.int(n, p).map(i128::from);
            Some(Matcher::Int(f, num_op(cx, op, node, &opath, int)?))
        }
        Kind::Temperature => Some(Matcher::Temperature(num_op(
            cx,
            op,
            node,
            &opath,
            |cx: &mut Cx<'_>, n: &Node, p: &str| cx.number(n, p),
        )?)),
        Kind::Bool(f) => Some(Matcher::Bool(f, BoolOp::Equals(cx.boolean(node, &opath)?))),
    }
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
            StrField::Method if value.is_empty() || !value.bytes().all(|b| b.is_ascii_uppercase()) => {
                cx.err(
                    span,
                    path,
                    format!("`{value}`: methods are matched exactly and are upper case (e.g. `POST`)"),
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

fn known_list(names: &std::collections::BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// `actions`

const VERBS: &[&str] = &[
    "deny",
    "set",
    "clamp",
    "default",
    "route",
    "split",
    "set_request_header",
    "remove_request_header",
    "set_response_header",
    "remove_response_header",
    "rate_limit_class",
    "priority",
    "tag",
];

/// Body keys the proxy itself owns or that carry the prompt: rules must not rewrite them.
const PROTECTED_BODY_KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "messages",
    "prompt",
    "input",
    "tools",
];

/// Headers that frame the message or belong to one hop: changing them breaks the exchange.
const PROTECTED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

fn compile_action(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    known: &KnownNames,
    rule_name: &str,
) -> Option<Action> {
    let mut obj = cx.table(node, path)?;
    let verbs: Vec<&str> = VERBS.iter().copied().filter(|v| obj.has(v)).collect();
    let verb = match verbs.as_slice() {
        [verb] => *verb,
        [] => {
            if obj.is_empty() {
                cx.err(&obj.span, path, format!("empty action; expected {}", one_of(VERBS)));
            } else {
                obj.finish(cx, path, VERBS);
            }
            return None;
        }
        [a, b, ..] => {
            cx.err(
                &obj.span,
                path,
                format!("one action per table (found `{a}` and `{b}`); list them as separate actions"),
            );
            return None;
        }
    };
    let vpath = format!("{path}.{verb}");
    let vnode = obj.take(verb)?;
    let mods: &[&str] = match verb {
        "set" | "default" | "set_request_header" | "set_response_header" => &["value"],
        "clamp" => &["min", "max", "default"],
        "split" => &["sticky"],
        _ => &[],
    };
    let taken: Vec<Option<&Node>> = mods.iter().map(|m| obj.take(m)).collect();
    let mut expected = vec![verb];
    expected.extend_from_slice(mods);
    obj.finish(cx, &vpath, &expected);
    let span = obj.span.clone();
    let required = |cx: &mut Cx<'_>, i: usize| -> Option<&Node> {
        let found = taken.get(i).copied().flatten();
        if found.is_none() {
            cx.err(&span, &vpath, format!("missing field `{}`", mods[i]));
        }
        found
    };
    match verb {
        "deny" => deny(cx, vnode, &vpath).map(Action::Deny),
        "set" => {
            let value = required(cx, 0);
            let key = cx.string(vnode, &vpath)?;
            let value = value?;
            set_action(cx, key, vnode, value, &vpath)
        }
        "clamp" => {
            let field = num_field(cx, vnode, &vpath)?;
            let read = |cx: &mut Cx<'_>, i: usize| {
                taken[i].map(|n| body_num(cx, field, n, &format!("{vpath}.{}", mods[i])))
            };
            let (min, max, default) = (read(cx, 0), read(cx, 1), read(cx, 2));
            let (min, max, default) = (flat(min)?, flat(max)?, flat(default)?);
            if min.is_none() && max.is_none() {
                cx.err(&span, &vpath, "needs `min`, `max` or both (for a value only when absent, use `default`)");
                return None;
            }
            let f = |n: Option<Num>| n.map(Num::as_f64);
            if let (Some(lo), Some(hi)) = (f(min), f(max)) {
                if lo > hi {
                    cx.err(&span, &vpath, format!("`min` ({lo}) is greater than `max` ({hi})"));
                    return None;
                }
            }
            if let Some(d) = f(default) {
                if f(min).is_some_and(|lo| d < lo) || f(max).is_some_and(|hi| d > hi) {
                    cx.err(&span, &vpath, format!("`default` ({d}) is outside `min`..`max`"));
                    return None;
                }
            }
            Some(Action::Clamp {
                field,
                min,
                max,
                default,
            })
        }
        "default" => {
            let value = required(cx, 0);
            let field = num_field(cx, vnode, &vpath)?;
            let value = body_num(cx, field, value?, &format!("{vpath}.value"))?;
            Some(Action::Default { field, value })
        }
        "route" => {
            let cluster = cx.string(vnode, &vpath)?;
            check_cluster(cx, cluster, &vnode.span(), &vpath, known)
                .then(|| Action::Route(cluster.into()))
        }
        "split" => split(cx, vnode, taken[0], &vpath, known, rule_name).map(Action::Split),
        "set_request_header" | "set_response_header" => {
            let value = required(cx, 0);
            let name = header_action_name(cx, vnode, &vpath)?;
            let value = value?;
            let text = cx.string(value, &format!("{vpath}.value"))?;
            let Ok(value) = HeaderValue::from_str(text) else {
                cx.err(
                    &value.span(),
                    &format!("{vpath}.value"),
                    "header values must be visible ASCII or spaces",
                );
                return None;
            };
            Some(if verb == "set_request_header" {
                Action::SetRequestHeader(name, value)
            } else {
                Action::SetResponseHeader(name, value)
            })
        }
        "remove_request_header" => header_action_name(cx, vnode, &vpath).map(Action::RemoveRequestHeader),
        "remove_response_header" => {
            header_action_name(cx, vnode, &vpath).map(Action::RemoveResponseHeader)
        }
        "rate_limit_class" => label(cx, vnode, &vpath).map(Action::RateLimitClass),
        "tag" => label(cx, vnode, &vpath).map(Action::Tag),
        _ => {
            let p = cx.int(vnode, &vpath)?;
            match i32::try_from(p) {
                Ok(p) => Some(Action::Priority(p)),
                Err(_) => {
                    cx.err(&vnode.span(), &vpath, "out of range for a priority (32-bit integer)");
                    None
                }
            }
        }
    }
}

/// `Some(None)` when absent, `Some(Some(v))` when valid, `None` when invalid (reported).
fn flat(v: Option<Option<Num>>) -> Option<Option<Num>> {
    match v {
        None => Some(None),
        Some(Some(n)) => Some(Some(n)),
        Some(None) => None,
    }
}

fn deny(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Deny> {
    let mut obj = cx.table(node, path)?;
    let status = obj.take("status");
    let message = obj.take("message");
    let code = obj.take("code");
    obj.finish(cx, path, &["status", "message", "code"]);
    let status = match status {
        Some(s) => {
            let spath = join(path, "status");
            let value = cx.int(s, &spath)?;
            if !(400..=599).contains(&value) {
                cx.err(
                    &s.span(),
                    &spath,
                    format!("{value} is not an error status; a deny answers with 400..=599"),
                );
                return None;
            }
            value as u16
        }
        None => {
            cx.err(&obj.span, path, "missing field `status`");
            return None;
        }
    };
    let message = match message {
        Some(m) => {
            let mpath = join(path, "message");
            let text = cx.string(m, &mpath)?;
            if text.trim().is_empty() {
                cx.err(&m.span(), &mpath, "must not be empty: clients show it to users");
                return None;
            }
            text.to_string()
        }
        None => {
            cx.err(&obj.span, path, "missing field `message`");
            return None;
        }
    };
    let code = match code {
        Some(c) => {
            let cpath = join(path, "code");
            let text = cx.string(c, &cpath)?;
            if text.is_empty()
                || text.len() > 64
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                cx.err(&c.span(), &cpath, format!("`{text}` must be 1 to 64 of `[a-z0-9_]`"));
                return None;
            }
            text.to_string()
        }
        None => "request_denied".to_string(),
    };
    Some(Deny {
        status,
        message,
        code,
    })
}

fn set_action(cx: &mut Cx<'_>, key: &str, key_node: &Node, value: &Node, path: &str) -> Option<Action> {
    if key.is_empty()
        || key.len() > 64
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        cx.err(&key_node.span(), path, format!("`{key}` is not a body parameter name (`[A-Za-z0-9_]`, 1 to 64)"));
        return None;
    }
    if PROTECTED_BODY_KEYS.contains(&key) {
        cx.err(
            &key_node.span(),
            path,
            format!("`{key}` cannot be set by rules (the proxy owns it, or it carries the prompt)"),
        );
        return None;
    }
    let vpath = format!("{path}.value");
    let fact = match NumField::parse(key) {
        Some(field) => Some((field, body_num(cx, field, value, &vpath)?)),
        None => None,
    };
    let json = match tree::to_json(value.get_ref()) {
        Ok(json) => json,
        Err(why) => {
            cx.err(&value.span(), &vpath, why);
            return None;
        }
    };
    Some(Action::Set {
        key: key.into(),
        raw: json.to_string().into(),
        fact,
    })
}

fn num_field(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<NumField> {
    let name = cx.string(node, path)?;
    let field = NumField::parse(name);
    if field.is_none() {
        cx.err(
            &node.span(),
            path,
            format!(
                "`{name}` cannot be clamped or defaulted; expected {}",
                one_of(&["max_tokens", "max_completion_tokens", "n", "temperature"])
            ),
        );
    }
    field
}

/// A value for a body number field: a non-negative integer, or any finite number for
/// `temperature`.
fn body_num(cx: &mut Cx<'_>, field: NumField, node: &Node, path: &str) -> Option<Num> {
    if field.is_integer() {
        let value = cx.int(node, path)?;
        match u64::try_from(value) {
            Ok(v) => Some(Num::Int(v)),
            Err(_) => {
                cx.err(&node.span(), path, format!("`{}` must not be negative", field.key()));
                None
            }
        }
    } else {
        cx.number(node, path).map(Num::Float)
    }
}

fn check_cluster(cx: &mut Cx<'_>, name: &str, span: &Range<usize>, path: &str, known: &KnownNames) -> bool {
    if known.clusters.contains(name) {
        return true;
    }
    cx.err(
        span,
        path,
        format!("unknown cluster `{name}` (known: {})", known_list(&known.clusters)),
    );
    false
}

fn split(
    cx: &mut Cx<'_>,
    node: &Node,
    sticky: Option<&Node>,
    path: &str,
    known: &KnownNames,
    rule_name: &str,
) -> Option<Split> {
    let sticky = match sticky {
        None => Sticky::Key,
        Some(s) => {
            let spath = format!("{path}.sticky");
            match cx.string(s, &spath)? {
                "key" => Sticky::Key,
                "request" => Sticky::Request,
                other => {
                    cx.err(&s.span(), &spath, format!("unknown value `{other}`; expected `key` or `request`"));
                    return None;
                }
            }
        }
    };
    let items = cx.array(node, path)?;
    if items.is_empty() {
        cx.err(&node.span(), path, "needs at least one `{ cluster, weight }`");
        return None;
    }
    let mut arms: Vec<(Box<str>, u64)> = Vec::with_capacity(items.len());
    let mut total: u64 = 0;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(mut arm) = cx.table(item, &ipath) else {
            ok = false;
            continue;
        };
        let cluster = arm.take("cluster");
        let weight = arm.take("weight");
        arm.finish(cx, &ipath, &["cluster", "weight"]);
        let cluster = match cluster {
            Some(c) => cx.string(c, &join(&ipath, "cluster")).filter(|name| {
                check_cluster(cx, name, &c.span(), &join(&ipath, "cluster"), known)
            }),
            None => {
                cx.err(&item.span(), &ipath, "missing field `cluster`");
                None
            }
        };
        if let Some(name) = cluster {
            if arms.iter().any(|(c, _)| &**c == name) {
                cx.err(&item.span(), &ipath, format!("cluster `{name}` appears twice in one split"));
                ok = false;
            }
        }
        let weight = match weight {
            Some(w) => {
                let wpath = join(&ipath, "weight");
                cx.int(w, &wpath).filter(|v| {
                    let fine = (0..=1_000_000).contains(v);
                    if !fine {
                        cx.err(&w.span(), &wpath, "must be 0..=1000000");
                    }
                    fine
                })
            }
            None => {
                cx.err(&item.span(), &ipath, "missing field `weight`");
                None
            }
        };
        match (cluster, weight) {
            (Some(cluster), Some(weight)) => {
                total += weight as u64;
                arms.push((cluster.into(), total));
            }
            _ => ok = false,
        }
    }
    if ok && total == 0 {
        cx.err(&node.span(), path, "the weights add up to 0");
        return None;
    }
    ok.then(|| Split {
        arms: arms.into(),
        total,
        sticky,
        salt: stable_hash(0, rule_name.as_bytes()),
    })
}

fn header_action_name(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<HeaderName> {
    let text = cx.string(node, path)?;
    match header_name(text) {
        Ok(name) if PROTECTED_HEADERS.contains(&name.as_str()) => {
            cx.err(
                &node.span(),
                path,
                format!("`{name}` frames the HTTP message and cannot be changed by rules"),
            );
            None
        }
        Ok(name) => Some(name),
        Err(why) => {
            cx.err(&node.span(), path, why);
            None
        }
    }
}

/// Tags and rate-limit classes become metric label values: a small, fixed alphabet.
pub(crate) fn check_label(text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.len() > 32
        || !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!("`{text}` must be 1 to 32 of `[a-z0-9_-]`"));
    }
    Ok(())
}

fn label(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Box<str>> {
    let text = cx.string(node, path)?;
    match check_label(text) {
        Ok(()) => Some(text.into()),
        Err(why) => {
            cx.err(&node.span(), path, why);
            None
        }
    }
}
