//! Compiling `split`: weighted arms over known clusters, each checked on its own so one
//! load reports every bad arm, and a `sticky` choice of what the arm is hashed from.

use std::ops::Range;

use super::known_list;
use crate::rules::action::{stable_hash, Split, Sticky};
use crate::rules::tree::{join, Cx, Node};
use crate::rules::KnownNames;

pub(super) fn check_cluster(
    cx: &mut Cx<'_>,
    name: &str,
    span: &Range<usize>,
    path: &str,
    known: &KnownNames,
) -> bool {
    if known.clusters.contains(name) {
        return true;
    }
    cx.err(
        span,
        path,
        format!(
            "unknown cluster `{name}` (known: {})",
            known_list(&known.clusters)
        ),
    );
    false
}

pub(super) fn split(
    cx: &mut Cx<'_>,
    node: &Node,
    sticky: Option<&Node>,
    path: &str,
    known: &KnownNames,
    rule_name: &str,
) -> Option<Split> {
    let sticky = match sticky {
        None => Sticky::Key,
        Some(s) => sticky_choice(cx, s, &format!("{path}.sticky"))?,
    };
    let items = cx.array(node, path)?;
    if items.is_empty() {
        cx.err(
            &node.span(),
            path,
            "needs at least one `{ cluster, weight }`",
        );
        return None;
    }
    // `arms` holds cumulative weights, so picking an arm is a search for the first bound above.
    let mut arms: Vec<(Box<str>, u64)> = Vec::with_capacity(items.len());
    let mut total: u64 = 0;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match arm(cx, item, &format!("{path}[{i}]"), known, &arms) {
            Some((cluster, weight)) => {
                total += weight;
                arms.push((cluster.into(), total));
            }
            None => ok = false,
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

fn sticky_choice(cx: &mut Cx<'_>, s: &Node, spath: &str) -> Option<Sticky> {
    match cx.string(s, spath)? {
        "key" => Some(Sticky::Key),
        "request" => Some(Sticky::Request),
        other => {
            cx.err(
                &s.span(),
                spath,
                format!("unknown value `{other}`; expected `key` or `request`"),
            );
            None
        }
    }
}

/// One `{ cluster, weight }` arm: `None` when anything about it is wrong (all reported).
fn arm<'v>(
    cx: &mut Cx<'_>,
    item: &'v Node,
    ipath: &str,
    known: &KnownNames,
    arms: &[(Box<str>, u64)],
) -> Option<(&'v str, u64)> {
    let mut arm = cx.table(item, ipath)?;
    let cluster = arm.take("cluster");
    let weight = arm.take("weight");
    arm.finish(cx, ipath, &["cluster", "weight"]);
    let cluster = match cluster {
        Some(c) => cx
            .string(c, &join(ipath, "cluster"))
            .filter(|name| check_cluster(cx, name, &c.span(), &join(ipath, "cluster"), known)),
        None => {
            cx.err(&item.span(), ipath, "missing field `cluster`");
            None
        }
    };
    let mut duplicate = false;
    if let Some(name) = cluster {
        if arms.iter().any(|(c, _)| &**c == name) {
            cx.err(
                &item.span(),
                ipath,
                format!("cluster `{name}` appears twice in one split"),
            );
            duplicate = true;
        }
    }
    let weight = match weight {
        Some(w) => {
            let wpath = join(ipath, "weight");
            cx.int(w, &wpath).filter(|v| {
                let fine = (0..=1_000_000).contains(v);
                if !fine {
                    cx.err(&w.span(), &wpath, "must be 0..=1000000");
                }
                fine
            })
        }
        None => {
            cx.err(&item.span(), ipath, "missing field `weight`");
            None
        }
    };
    match (cluster, weight) {
        (Some(cluster), Some(weight)) if !duplicate => Some((cluster, weight as u64)),
        _ => None,
    }
}
