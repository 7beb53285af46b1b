//! Load-time checking and compilation of a rule file into matchers and actions. Every
//! problem is recorded (with file, line, rule and field) and compilation goes on, so one
//! load reports them all.

mod actions;
mod split;
mod when;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::action::Action;
use super::expr::Matcher;
use super::testing::{self, TestCase};
use super::tree::{self, join, Cx, Node, Obj};
use super::{KnownNames, RuleIssue};

pub(crate) use actions::check_label;
use actions::compile_action;
use when::matcher;

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
            cx.rule = None;
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
    let name = rule_name(cx, &mut obj, &prefix);
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
    let rule_name_text = name.as_ref().map_or("", |(n, _)| *n);
    let actions = match obj.take("actions") {
        Some(list) => rule_actions(cx, list, &join(&base, "actions"), known, rule_name_text),
        None => Vec::new(),
    };
    let stop = obj.take("then").is_some_and(|t| rule_stop(cx, t, &base));
    obj.finish(
        cx,
        &base,
        &["name", "description", "when", "actions", "then"],
    );
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

/// The rule's `name` and its span, when present and valid.
fn rule_name<'v>(
    cx: &mut Cx<'_>,
    obj: &mut Obj<'v>,
    prefix: &str,
) -> Option<(&'v str, Range<usize>)> {
    let Some(n) = obj.take("name") else {
        cx.err(&obj.span, prefix, "missing field `name`");
        return None;
    };
    let path = join(prefix, "name");
    let name = cx.string(n, &path)?;
    match check_name(name) {
        Ok(()) => Some((name, n.span())),
        Err(why) => {
            cx.err(&n.span(), &path, why);
            None
        }
    }
}

/// The `actions` list; `deny` ends evaluation, so an action after it is an error.
fn rule_actions(
    cx: &mut Cx<'_>,
    list: &Node,
    path: &str,
    known: &KnownNames,
    rule_name: &str,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(items) = cx.array(list, path) else {
        return actions;
    };
    let mut after_deny = false;
    for (i, item) in items.iter().enumerate() {
        let apath = format!("{path}[{i}]");
        if after_deny {
            // Reported once; the rest are still checked.
            after_deny = false;
            cx.err(
                &item.span(),
                &apath,
                "unreachable: `deny` ends evaluation, so it must be the last action",
            );
        }
        if let Some(action) = compile_action(cx, item, &apath, known, rule_name) {
            after_deny = matches!(action, Action::Deny(_));
            actions.push(action);
        }
    }
    actions
}

/// `then = "stop"` ends evaluation after this rule; `"continue"` (the default) goes on.
fn rule_stop(cx: &mut Cx<'_>, t: &Node, base: &str) -> bool {
    match cx.string(t, &join(base, "then")) {
        Some("continue") | None => false,
        Some("stop") => true,
        Some(other) => {
            cx.err(
                &t.span(),
                &join(base, "then"),
                format!("unknown value `{other}`; expected `continue` or `stop`"),
            );
            false
        }
    }
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

fn known_list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
