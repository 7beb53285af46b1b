//! Compiling `actions`: one verb per table, its modifiers typed and checked (clusters known,
//! header names valid and not framing headers, labels from a small alphabet).

use std::ops::Range;

use http::{HeaderName, HeaderValue};

use super::split::{check_cluster, split};
use super::when::header_name;
use crate::rules::action::{Action, Num, NumField};
use crate::rules::input::Deny;
use crate::rules::tree::{self, join, one_of, Cx, Node, Obj};
use crate::rules::KnownNames;

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

pub(super) fn compile_action(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    known: &KnownNames,
    rule_name: &str,
) -> Option<Action> {
    let mut obj = cx.table(node, path)?;
    let name = choose_verb(cx, &mut obj, path)?;
    let v = take_verb(cx, obj, name, path)?;
    match name {
        "deny" => deny(cx, v.node, &v.path).map(Action::Deny),
        "set" => {
            let value = v.required(cx, 0);
            let key = cx.string(v.node, &v.path)?;
            set_action(cx, key, v.node, value?, &v.path)
        }
        "clamp" => clamp(cx, &v),
        "default" => default_action(cx, &v),
        "route" => {
            let cluster = cx.string(v.node, &v.path)?;
            check_cluster(cx, cluster, &v.node.span(), &v.path, known)
                .then(|| Action::Route(cluster.into()))
        }
        "split" => split(cx, v.node, v.taken[0], &v.path, known, rule_name).map(Action::Split),
        "set_request_header" | "set_response_header" => set_header(cx, &v),
        "remove_request_header" => {
            header_action_name(cx, v.node, &v.path).map(Action::RemoveRequestHeader)
        }
        "remove_response_header" => {
            header_action_name(cx, v.node, &v.path).map(Action::RemoveResponseHeader)
        }
        "rate_limit_class" => label(cx, v.node, &v.path).map(Action::RateLimitClass),
        "tag" => label(cx, v.node, &v.path).map(Action::Tag),
        _ => priority(cx, &v),
    }
}

/// The one verb of an action table; reports none or several.
fn choose_verb(cx: &mut Cx<'_>, obj: &mut Obj<'_>, path: &str) -> Option<&'static str> {
    // `default` is also `clamp`'s modifier: with `clamp` present it is not a second verb.
    let verbs: Vec<&'static str> = VERBS
        .iter()
        .copied()
        .filter(|v| obj.has(v) && !(*v == "default" && obj.has("clamp")))
        .collect();
    match verbs.as_slice() {
        [verb] => Some(*verb),
        [] => {
            if obj.is_empty() {
                cx.err(
                    &obj.span,
                    path,
                    format!("empty action; expected {}", one_of(VERBS)),
                );
            } else {
                obj.finish(cx, path, VERBS);
            }
            None
        }
        [a, b, ..] => {
            cx.err(
                &obj.span,
                path,
                format!(
                    "one action per table (found `{a}` and `{b}`); list them as separate actions"
                ),
            );
            None
        }
    }
}

/// An action's verb with its value and modifiers taken from the table.
struct Verb<'v> {
    name: &'static str,
    node: &'v Node,
    path: String,
    span: Range<usize>,
    mods: &'static [&'static str],
    taken: Vec<Option<&'v Node>>,
}

impl<'v> Verb<'v> {
    /// Modifier `i`, reported as missing when absent.
    fn required(&self, cx: &mut Cx<'_>, i: usize) -> Option<&'v Node> {
        let found = self.taken.get(i).copied().flatten();
        if found.is_none() {
            let message = format!("missing field `{}`", self.mods[i]);
            cx.err(&self.span, &self.path, message);
        }
        found
    }
}

fn take_verb<'v>(
    cx: &mut Cx<'_>,
    mut obj: Obj<'v>,
    verb: &'static str,
    path: &str,
) -> Option<Verb<'v>> {
    let vpath = format!("{path}.{verb}");
    let vnode = obj.take(verb)?;
    let mods: &'static [&'static str] = match verb {
        "set" | "default" | "set_request_header" | "set_response_header" => &["value"],
        "clamp" => &["min", "max", "default"],
        "split" => &["sticky"],
        _ => &[],
    };
    let taken: Vec<Option<&Node>> = mods.iter().map(|m| obj.take(m)).collect();
    let mut expected = vec![verb];
    expected.extend_from_slice(mods);
    let before = cx.issues.len();
    obj.finish(cx, &vpath, &expected);
    if cx.issues.len() != before {
        // A misspelt modifier: checking the rest would only report its consequences.
        return None;
    }
    Some(Verb {
        name: verb,
        node: vnode,
        path: vpath,
        span: obj.span.clone(),
        mods,
        taken,
    })
}

fn clamp(cx: &mut Cx<'_>, v: &Verb<'_>) -> Option<Action> {
    let field = num_field(cx, v.node, &v.path)?;
    let read = |cx: &mut Cx<'_>, i: usize| {
        v.taken[i].map(|n| body_num(cx, field, n, &format!("{}.{}", v.path, v.mods[i])))
    };
    let (min, max, default) = (read(cx, 0), read(cx, 1), read(cx, 2));
    let (min, max, default) = (flat(min)?, flat(max)?, flat(default)?);
    if min.is_none() && max.is_none() {
        cx.err(
            &v.span,
            &v.path,
            "needs `min`, `max` or both (for a value only when absent, use `default`)",
        );
        return None;
    }
    let f = |n: Option<Num>| n.map(Num::as_f64);
    if let (Some(lo), Some(hi)) = (f(min), f(max)) {
        if lo > hi {
            cx.err(
                &v.span,
                &v.path,
                format!("`min` ({lo}) is greater than `max` ({hi})"),
            );
            return None;
        }
    }
    if let Some(d) = f(default) {
        if f(min).is_some_and(|lo| d < lo) || f(max).is_some_and(|hi| d > hi) {
            cx.err(
                &v.span,
                &v.path,
                format!("`default` ({d}) is outside `min`..`max`"),
            );
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

fn default_action(cx: &mut Cx<'_>, v: &Verb<'_>) -> Option<Action> {
    let value = v.required(cx, 0);
    let field = num_field(cx, v.node, &v.path)?;
    let value = body_num(cx, field, value?, &format!("{}.value", v.path))?;
    Some(Action::Default { field, value })
}

fn set_header(cx: &mut Cx<'_>, v: &Verb<'_>) -> Option<Action> {
    let value = v.required(cx, 0);
    let name = header_action_name(cx, v.node, &v.path)?;
    let value = value?;
    let vpath = format!("{}.value", v.path);
    let text = cx.string(value, &vpath)?;
    let Ok(header) = HeaderValue::from_str(text) else {
        cx.err(
            &value.span(),
            &vpath,
            "header values must be visible ASCII or spaces",
        );
        return None;
    };
    Some(if v.name == "set_request_header" {
        Action::SetRequestHeader(name, header)
    } else {
        Action::SetResponseHeader(name, header)
    })
}

fn priority(cx: &mut Cx<'_>, v: &Verb<'_>) -> Option<Action> {
    let p = cx.int(v.node, &v.path)?;
    match i32::try_from(p) {
        Ok(p) => Some(Action::Priority(p)),
        Err(_) => {
            cx.err(
                &v.node.span(),
                &v.path,
                "out of range for a priority (32-bit integer)",
            );
            None
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
                cx.err(
                    &m.span(),
                    &mpath,
                    "must not be empty: clients show it to users",
                );
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
                cx.err(
                    &c.span(),
                    &cpath,
                    format!("`{text}` must be 1 to 64 of `[a-z0-9_]`"),
                );
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

fn set_action(
    cx: &mut Cx<'_>,
    key: &str,
    key_node: &Node,
    value: &Node,
    path: &str,
) -> Option<Action> {
    if key.is_empty()
        || key.len() > 64
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        cx.err(
            &key_node.span(),
            path,
            format!("`{key}` is not a body parameter name (`[A-Za-z0-9_]`, 1 to 64)"),
        );
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
                cx.err(
                    &node.span(),
                    path,
                    format!("`{}` must not be negative", field.key()),
                );
                None
            }
        }
    } else {
        cx.number(node, path).map(Num::Float)
    }
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
