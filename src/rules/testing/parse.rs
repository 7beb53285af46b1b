//! Reading `[[tests]]` entries: the example request (headers, key, client IP, a JSON body
//! or explicit facts) and the expectations, all checked like rules are.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Expect, TestCase, TestRequest};
use crate::rules::compile::check_label;
use crate::rules::input::{BodyFacts, BODY_FIELDS};
use crate::rules::tree::{self, join, Cx, Node, Value};
use crate::rules::KnownNames;

const TEST_FIELDS: &[&str] = &["name", "request", "expect"];
const REQUEST_FIELDS: &[&str] = &[
    "method",
    "path",
    "headers",
    "client_ip",
    "key",
    "model",
    "body",
    "facts",
    "request_id",
];
/// A test request's `facts` are the body fields rules see.
const FACT_FIELDS: &[&str] = BODY_FIELDS;
const EXPECT_FIELDS: &[&str] = &[
    "denied",
    "deny_status",
    "deny_code",
    "deny_message",
    "body_sets",
    "route_cluster",
    "rate_limit_class",
    "priority",
    "tags",
    "matched",
    "request_headers_set",
    "request_headers_removed",
    "response_headers_set",
    "response_headers_removed",
];

pub(crate) fn parse_test(
    cx: &mut Cx<'_>,
    node: &Node,
    index: usize,
    known: &KnownNames,
) -> Option<TestCase> {
    let prefix = format!("tests[{index}]");
    let mut obj = cx.table(node, &prefix)?;
    let before = cx.issues.len();
    let name = obj.take("name");
    let request = obj.take("request");
    let expect = obj.take("expect");
    let name = match name {
        Some(n) => cx.string(n, &join(&prefix, "name")).map(str::to_string),
        None => {
            cx.err(&obj.span, &prefix, "missing field `name`");
            None
        }
    };
    let base = match &name {
        Some(name) => {
            cx.test = Some(name.clone());
            String::new()
        }
        None => prefix,
    };
    obj.finish(cx, &base, TEST_FIELDS);
    let request = match request {
        Some(r) => parse_request(
            cx,
            r,
            &join(&base, "request"),
            name.as_deref().unwrap_or(""),
        ),
        // A test without a request checks the rules against an empty POST.
        None => parse_request(cx, &empty_table(), &join(&base, "request"), ""),
    };
    let expect = match expect {
        Some(e) => parse_expect(cx, e, &join(&base, "expect"), known),
        None => {
            cx.err(&node.span(), &base, "missing field `expect`");
            None
        }
    };
    if cx.issues.len() != before {
        return None;
    }
    Some(TestCase {
        file: cx.file.to_path_buf(),
        line: cx.line_col(node.span().start).0.unwrap_or(0),
        name: name?,
        request: request?,
        expect: expect?,
    })
}

fn empty_table() -> Node {
    toml::Spanned::new(0..0, Value::Table(tree::Table::default()))
}

fn parse_request(cx: &mut Cx<'_>, node: &Node, path: &str, test_name: &str) -> Option<TestRequest> {
    let mut obj = cx.table(node, path)?;
    let mut request = TestRequest {
        method: "POST".to_string(),
        path: "/v1/chat/completions".to_string(),
        headers: HeaderMap::new(),
        client_ip: None,
        key_name: None,
        key_team: None,
        key_tags: Vec::new(),
        model: None,
        facts: BodyFacts::default(),
        request_id: test_name.to_string(),
    };
    let mut ok = true;
    let fields: Vec<Option<&Node>> = REQUEST_FIELDS.iter().map(|f| obj.take(f)).collect();
    obj.finish(cx, path, REQUEST_FIELDS);
    let [method, rpath, headers, client_ip, key, model, body, facts, request_id] = fields[..]
    else {
        return None;
    };
    let mut string = |cx: &mut Cx<'_>, node: Option<&Node>, name: &str, slot: &mut String| {
        if let Some(n) = node {
            match cx.string(n, &join(path, name)) {
                Some(s) => *slot = s.to_string(),
                None => ok = false,
            }
        }
    };
    string(cx, method, "method", &mut request.method);
    string(cx, rpath, "path", &mut request.path);
    string(cx, request_id, "request_id", &mut request.request_id);
    if let Some(h) = headers {
        ok &= parse_headers(cx, h, &join(path, "headers"), &mut request.headers);
    }
    if let Some(ip) = client_ip {
        let ipath = join(path, "client_ip");
        match cx.string(ip, &ipath).map(|s| (s, s.parse::<IpAddr>())) {
            Some((_, Ok(addr))) => request.client_ip = Some(addr),
            Some((text, Err(_))) => {
                cx.err(&ip.span(), &ipath, format!("`{text}` is not an IP address"));
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(k) = key {
        ok &= parse_key(cx, k, &join(path, "key"), &mut request);
    }
    if let Some(b) = body {
        let bpath = join(path, "body");
        match cx.string(b, &bpath).map(body_facts) {
            Some(Ok((model, facts))) => {
                request.model = model;
                request.facts = facts;
            }
            Some(Err(why)) => {
                cx.err(&b.span(), &bpath, why);
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(m) = model {
        match cx.string(m, &join(path, "model")) {
            Some(s) => request.model = Some(s.to_string()),
            None => ok = false,
        }
    }
    if let Some(f) = facts {
        ok &= parse_facts(cx, f, &join(path, "facts"), &mut request.facts);
    }
    ok.then_some(request)
}

fn parse_headers(cx: &mut Cx<'_>, node: &Node, path: &str, headers: &mut HeaderMap) -> bool {
    let Some(mut obj) = cx.table(node, path) else {
        return false;
    };
    let mut ok = true;
    for (name, value) in obj.entries() {
        let hpath = join(path, name.get_ref());
        let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
            cx.err(
                &name.span(),
                path,
                format!("`{}` is not a valid header name", name.get_ref()),
            );
            ok = false;
            continue;
        };
        let Some(values) = cx.strings(value, &hpath) else {
            ok = false;
            continue;
        };
        for (text, span) in values {
            match HeaderValue::from_str(text) {
                Ok(v) => {
                    headers.append(header.clone(), v);
                }
                Err(_) => {
                    cx.err(
                        &span,
                        &hpath,
                        "header values must be visible ASCII or spaces",
                    );
                    ok = false;
                }
            }
        }
    }
    ok
}

fn parse_key(cx: &mut Cx<'_>, node: &Node, path: &str, request: &mut TestRequest) -> bool {
    let Some(mut obj) = cx.table(node, path) else {
        return false;
    };
    let name = obj.take("name");
    let team = obj.take("team");
    let tags = obj.take("tags");
    obj.finish(cx, path, &["name", "team", "tags"]);
    let mut ok = true;
    if let Some(n) = name {
        request.key_name = cx.string(n, &join(path, "name")).map(str::to_string);
        ok &= request.key_name.is_some();
    }
    if let Some(t) = team {
        request.key_team = cx.string(t, &join(path, "team")).map(str::to_string);
        ok &= request.key_team.is_some();
    }
    if let Some(t) = tags {
        match string_vec(cx, t, &join(path, "tags")) {
            Some(tags) => request.key_tags = tags,
            None => ok = false,
        }
    }
    ok
}

fn string_vec(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Vec<String>> {
    let items = cx.array(node, path)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(cx.string(item, &format!("{path}[{i}]")).map(str::to_string));
    }
    out.into_iter().collect()
}

/// The facts the router would extract from this body (same conventions as `RequestFacts`),
/// so tests need no router. `prompt_bytes` is the compact re-serialised size of `messages`,
/// `prompt` and `input`, equal to the router's raw size for compact JSON.
pub(crate) fn body_facts(text: &str) -> Result<(Option<String>, BodyFacts), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("body must be a JSON object".to_string());
    };
    let mut facts = BodyFacts {
        stream: map.get("stream").and_then(serde_json::Value::as_bool),
        max_tokens: map.get("max_tokens").and_then(serde_json::Value::as_u64),
        max_completion_tokens: map
            .get("max_completion_tokens")
            .and_then(serde_json::Value::as_u64),
        n: map.get("n").and_then(serde_json::Value::as_u64),
        temperature: map.get("temperature").and_then(serde_json::Value::as_f64),
        has_tools: map
            .get("tools")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        prompt_bytes: 0,
    };
    for key in ["messages", "prompt", "input"] {
        if let Some(v) = map.get(key) {
            facts.prompt_bytes += v.to_string().len() as u64;
        }
    }
    let model = map
        .get("model")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    Ok((model, facts))
}

fn parse_facts(cx: &mut Cx<'_>, node: &Node, path: &str, facts: &mut BodyFacts) -> bool {
    let Some(mut obj) = cx.table(node, path) else {
        return false;
    };
    let fields: Vec<Option<&Node>> = FACT_FIELDS.iter().map(|f| obj.take(f)).collect();
    obj.finish(cx, path, FACT_FIELDS);
    let before = cx.issues.len();
    let uint = |cx: &mut Cx<'_>, n: &Node, name: &str| -> Option<u64> {
        let p = join(path, name);
        let v = cx.int(n, &p)?;
        let r = u64::try_from(v).ok();
        if r.is_none() {
            cx.err(&n.span(), &p, "must not be negative");
        }
        r
    };
    for (name, node) in FACT_FIELDS.iter().zip(fields) {
        let Some(n) = node else { continue };
        match *name {
            "stream" => facts.stream = cx.boolean(n, &join(path, name)),
            "tools" => facts.has_tools = cx.boolean(n, &join(path, name)).unwrap_or(false),
            "temperature" => facts.temperature = cx.number(n, &join(path, name)),
            "max_tokens" => facts.max_tokens = uint(cx, n, name),
            "max_completion_tokens" => facts.max_completion_tokens = uint(cx, n, name),
            "n" => facts.n = uint(cx, n, name),
            _ => facts.prompt_bytes = uint(cx, n, name).unwrap_or(0),
        }
    }
    cx.issues.len() == before
}

fn parse_expect(cx: &mut Cx<'_>, node: &Node, path: &str, known: &KnownNames) -> Option<Expect> {
    let mut obj = cx.table(node, path)?;
    let fields: Vec<Option<&Node>> = EXPECT_FIELDS.iter().map(|f| obj.take(f)).collect();
    obj.finish(cx, path, EXPECT_FIELDS);
    let before = cx.issues.len();
    let mut e = Expect::default();
    for (name, node) in EXPECT_FIELDS.iter().zip(fields) {
        let Some(n) = node else { continue };
        let p = join(path, name);
        match *name {
            "denied" => e.denied = cx.boolean(n, &p),
            "deny_status" => {
                e.deny_status = cx.int(n, &p).and_then(|s| u16::try_from(s).ok());
            }
            "deny_code" => e.deny_code = cx.string(n, &p).map(str::to_string),
            "deny_message" => e.deny_message = cx.string(n, &p).map(str::to_string),
            "body_sets" => {
                let Some(mut t) = cx.table(n, &p) else {
                    continue;
                };
                let mut map = BTreeMap::new();
                for (key, value) in t.entries() {
                    match tree::to_json(value.get_ref()) {
                        Ok(json) => {
                            map.insert(key.get_ref().clone(), json);
                        }
                        Err(why) => cx.err(&value.span(), &join(&p, key.get_ref()), why),
                    }
                }
                e.body_sets = Some(map);
            }
            "route_cluster" => {
                e.route_cluster = optional_string(cx, n, &p);
                if let Some(Some(cluster)) = &e.route_cluster {
                    if !known.clusters.contains(cluster) {
                        cx.err(&n.span(), &p, format!("unknown cluster `{cluster}`"));
                    }
                }
            }
            "rate_limit_class" => e.rate_limit_class = optional_string(cx, n, &p),
            "priority" => {
                e.priority = match n.get_ref() {
                    Value::Bool(false) => Some(None),
                    _ => cx.int(n, &p).and_then(|v| i32::try_from(v).ok()).map(Some),
                }
            }
            "tags" => {
                e.tags = string_vec(cx, n, &p);
                for tag in e.tags.iter().flatten() {
                    if let Err(why) = check_label(tag) {
                        cx.err(&n.span(), &p, why);
                    }
                }
            }
            "matched" => e.matched = string_vec(cx, n, &p),
            "request_headers_set" => e.request_headers_set = header_map(cx, n, &p),
            "response_headers_set" => e.response_headers_set = header_map(cx, n, &p),
            "request_headers_removed" => {
                e.request_headers_removed = string_vec(cx, n, &p).map(lower)
            }
            _ => e.response_headers_removed = string_vec(cx, n, &p).map(lower),
        }
    }
    if let Some(status) = e.deny_status {
        if !(400..=599).contains(&status) {
            cx.err(
                &node.span(),
                &join(path, "deny_status"),
                "a deny status is 400..=599",
            );
        }
    }
    (cx.issues.len() == before).then_some(e)
}

fn lower(names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// A string, or `false` for "none".
fn optional_string(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Option<String>> {
    match node.get_ref() {
        Value::Bool(false) => Some(None),
        Value::Str(s) => Some(Some(s.clone())),
        other => {
            cx.err(
                &node.span(),
                path,
                format!(
                    "expected a string, or `false` for none; found {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

fn header_map(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
    let mut obj = cx.table(node, path)?;
    let mut map = BTreeMap::new();
    for (name, value) in obj.entries() {
        let value = cx.string(value, &join(path, name.get_ref()))?;
        map.insert(name.get_ref().to_ascii_lowercase(), value.to_string());
    }
    Some(map)
}
