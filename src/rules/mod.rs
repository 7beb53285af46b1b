//! Lua-free rules: declarative request rules, checked when loaded, compiled once, cheap per
//! request. They cover what gateways usually script in Lua (cap parameters, gate models per
//! team, canary splits, route by header, strip headers); `lua-free-rules/README.md` is the
//! user guide. Pure logic: no I/O except reading rule files, no clock, no async.
//!
//! # Language
//!
//! A rule file holds `[[rules]]`, evaluated in file order, files in lexical path order:
//!
//! ```toml
//! [[rules]]
//! name = "cap-max-tokens-for-interns"      # unique across files; [A-Za-z0-9_.-]{1,64}
//! description = "optional, for humans"
//! when = { all = [ { field = "key.tags", contains = "intern" },
//!                  { field = "max_tokens", gt = 512 } ] }
//! actions = [ { clamp = "max_tokens", max = 512 }, { tag = "capped" } ]
//! then = "continue"                        # default; "stop" ends evaluation after this rule
//! ```
//!
//! **`when`** is one table: `{ field = F, <operator> = V }` with exactly one operator,
//! `{ all = [..] }`, `{ any = [..] }`, `{ not = {..} }` or `{ always = true }`.
//!
//! | field | type | operators |
//! |---|---|---|
//! | `method`, `path`, `header.<name>`, `key.name`, `key.team`, `model` | string | `equals`, `in`, `prefix`, `regex`, `exists` |
//! | `key.tags` | set | `contains` (one tag), `in` (any of), `exists` (has tags) |
//! | `client_ip` | IP | `cidr` (one network or a list; a bare IP is a /32 or /128), `exists` |
//! | `max_tokens`, `max_completion_tokens`, `n`, `prompt_bytes` | integer | `gt`, `gte`, `lt`, `lte`, `equals`, `in`, `exists` |
//! | `temperature` | number | same as integers |
//! | `stream`, `tools` (non-empty `tools` array) | boolean | `equals`, `exists` |
//!
//! An absent value matches nothing but `exists = false`. Header names are case-insensitive;
//! a repeated header matches when any of its values does. Regexes are unanchored (write
//! `^…$`) and run in linear time. `model` is the public alias; `equals`/`in` values must be
//! known aliases. Body fields are what the router parsed, updated by earlier rules' actions.
//!
//! **`actions`** (a list; each item is one table with one verb):
//!
//! | action | effect |
//! |---|---|
//! | `{ deny = { status = 403, message = "…", code = "model_forbidden" } }` | answer an OpenAI-shaped error (400..=599; `code` defaults to `request_denied`); ends evaluation; must be last |
//! | `{ set = "temperature", value = 0.2 }` | set a top-level body parameter to any JSON value |
//! | `{ clamp = "max_tokens", min = 1, max = 512, default = 256 }` | bring a present value into range; `default` (optional) also sets it when absent |
//! | `{ default = "max_tokens", value = 256 }` | set only when absent |
//! | `{ route = "vllm-a" }` | send to this cluster instead of the model's |
//! | `{ split = [ { cluster = "new", weight = 10 }, { cluster = "stable", weight = 90 } ], sticky = "key" }` | weighted pick; `sticky = "key"` (default: the key name, else the request id) or `"request"` |
//! | `{ set_request_header = "x-a", value = "b" }`, `{ remove_request_header = "x-a" }` | upstream request headers |
//! | `{ set_response_header = "x-a", value = "b" }`, `{ remove_response_header = "x-a" }` | client response headers |
//! | `{ rate_limit_class = "batch" }`, `{ priority = 5 }` | hints for admission; last writer wins |
//! | `{ tag = "capped" }` | label for access log and metrics (`[a-z0-9_-]{1,32}`) |
//!
//! `clamp`/`default` work on `max_tokens`, `max_completion_tokens`, `n`, `temperature`;
//! `set` refuses `model`, `stream`, `stream_options`, `messages`, `prompt`, `input`, `tools`.
//! Framing headers (`content-length`, `transfer-encoding`, `connection`, `host`, …) are off
//! limits.
//!
//! Files may also hold `[[tests]]` (example request + expected outcome), run by
//! [`run_rule_tests`] into a [`TestReport`].
//!
//! # Use
//!
//! ```ignore
//! // Names from the main config; rule paths resolved against the config file's directory.
//! let known = KnownNames::new(cluster_names, model_aliases);
//! let rules = rules::load_paths(&[dir.join("lua-free-rules/*.toml")], &known)?; // load / reload
//! let outcome = rules.evaluate(&RuleInput { .. });                         // per request
//! let report = rules::run_rule_tests(Path::new("lua-free-rules"), &known)?; // CLI
//! ```

mod action;
mod compile;
mod error;
mod expr;
mod input;
mod testing;
mod tree;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub use error::{RuleIssue, RulesError};
pub use input::{BodyFacts, Deny, KeyInfo, RuleInput, RuleOutcome};
pub use testing::{Failure, Mismatch, TestReport};

use action::{Action, Flow};
use compile::Rule;
use testing::TestCase;

/// Names rules may refer to, from the main config: unknown ones are load errors.
#[derive(Debug, Clone, Default)]
pub struct KnownNames {
    pub clusters: BTreeSet<String>,
    /// Public model aliases.
    pub models: BTreeSet<String>,
}

impl KnownNames {
    pub fn new<C, M>(clusters: C, models: M) -> Self
    where
        C: IntoIterator,
        C::Item: Into<String>,
        M: IntoIterator,
        M::Item: Into<String>,
    {
        KnownNames {
            clusters: clusters.into_iter().map(Into::into).collect(),
            models: models.into_iter().map(Into::into).collect(),
        }
    }
}

/// One rule file's text; `path` names it in messages and orders it among the others.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub path: PathBuf,
    pub text: String,
}

/// Compiled rules, immutable and shareable (`Arc<RuleSet>` in the config snapshot).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    tags: Vec<String>,
    rate_limit_classes: Vec<String>,
    files: Vec<PathBuf>,
}

impl RuleSet {
    /// Run every rule against one request. Allocation-free unless a rule matches.
    pub fn evaluate<'r>(&'r self, input: &RuleInput<'_>) -> RuleOutcome<'r> {
        let mut out = RuleOutcome::default();
        let mut facts = input.body;
        for rule in &self.rules {
            if !rule.when.matches(input, &facts) {
                continue;
            }
            out.matched.push(&rule.name);
            for action in rule.actions.iter() {
                if action.apply(input, &mut facts, &mut out) == Flow::Stop {
                    return out;
                }
            }
            if rule.stop {
                break;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names in evaluation order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// `(name, file, line)` of every rule in evaluation order, for listings.
    pub fn rule_locations(&self) -> impl Iterator<Item = (&str, &Path, usize)> {
        self.rules.iter().map(|r| (&*r.name, &*r.file, r.line))
    }

    /// Every tag an outcome can carry (sorted): the bounded label set for metrics.
    pub fn declared_tags(&self) -> &[String] {
        &self.tags
    }

    /// Every `rate_limit_class` an outcome can carry (sorted).
    pub fn rate_limit_classes(&self) -> &[String] {
        &self.rate_limit_classes
    }

    /// The files the rules came from, in evaluation order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Compile rule files (sorted here by path, so the caller's order does not matter) and check
/// their `[[tests]]` too. Returns every problem found in every file.
pub fn compile(files: &[RuleSource], known: &KnownNames) -> Result<RuleSet, RulesError> {
    compile_with_tests(files, known).map(|(rules, _)| rules)
}

fn compile_with_tests(
    files: &[RuleSource],
    known: &KnownNames,
) -> Result<(RuleSet, Vec<TestCase>), RulesError> {
    let mut sorted: Vec<&RuleSource> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut issues = Vec::new();
    let mut set = RuleSet::default();
    let mut tests = Vec::new();
    // name -> (file, line) of its first definition.
    let mut seen: HashMap<String, (PathBuf, Option<usize>)> = HashMap::new();
    for source in sorted {
        let out = compile::compile_file(&source.path, &source.text, known, &mut issues);
        for (name, span) in out.names {
            let (line, column) = tree::line_col(&source.text, span.start);
            match seen.get(&name) {
                Some((first_file, first_line)) => issues.push(RuleIssue {
                    file: source.path.clone(),
                    line,
                    column,
                    field: error::rule_field(Some(&name), None, "name"),
                    message: format!(
                        "duplicate rule name; first defined at {}:{}",
                        first_file.display(),
                        first_line.map_or("?".to_string(), |l| l.to_string())
                    ),
                }),
                None => {
                    seen.insert(name, (source.path.clone(), line));
                }
            }
        }
        set.rules.extend(out.rules);
        tests.extend(out.tests);
        set.files.push(source.path.clone());
    }
    if !issues.is_empty() {
        return Err(RulesError { issues });
    }
    let mut tags = BTreeSet::new();
    let mut classes = BTreeSet::new();
    for action in set.rules.iter().flat_map(|r| r.actions.iter()) {
        match action {
            Action::Tag(t) => {
                tags.insert(t.to_string());
            }
            Action::RateLimitClass(c) => {
                classes.insert(c.to_string());
            }
            _ => {}
        }
    }
    set.tags = tags.into_iter().collect();
    set.rate_limit_classes = classes.into_iter().collect();
    Ok((set, tests))
}

/// Read and compile rule files. Each path is a file, a directory (its `*.toml`, not
/// recursive), or a pattern whose last component has `*` wildcards (`lua-free-rules/*.toml`).
/// A pattern or directory matching nothing is an error: a typo must not silently disable
/// every rule.
pub fn load_paths(paths: &[PathBuf], known: &KnownNames) -> Result<RuleSet, RulesError> {
    let sources = read_sources(paths)?;
    compile(&sources, known)
}

/// Compile every `*.toml` in `dir` and run their `[[tests]]`.
/// `Err` when the rules (or the tests' own syntax) do not load.
pub fn run_rule_tests(dir: &Path, known: &KnownNames) -> Result<TestReport, RulesError> {
    let sources = read_sources(&[dir.to_path_buf()])?;
    let (rules, tests) = compile_with_tests(&sources, known)?;
    Ok(testing::run(&rules, &tests))
}

/// Read the files `paths` name (see [`load_paths`]), sorted and de-duplicated.
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<RuleSource>, RulesError> {
    let mut files = BTreeSet::new();
    let mut issues = Vec::new();
    let mut fail = |path: &Path, message: String| issues.push(RuleIssue::whole_file(path, message));
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (dir, pattern) = if name.contains('*') {
            (path.parent().unwrap_or(Path::new(".")), name)
        } else if path.is_dir() {
            (path.as_path(), "*.toml")
        } else {
            files.insert(path.clone());
            continue;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let before = files.len();
                for entry in entries.flatten() {
                    let file = entry.path();
                    let matches = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| wildcard(pattern, n));
                    if matches && file.is_file() {
                        files.insert(file);
                    }
                }
                if files.len() == before {
                    fail(path, format!("no rule files match `{pattern}`"));
                }
            }
            Err(e) => fail(dir, format!("cannot read directory: {e}")),
        }
    }
    let mut sources = Vec::with_capacity(files.len());
    for path in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push(RuleSource { path, text }),
            Err(e) => fail(&path, format!("cannot read file: {e}")),
        }
    }
    if issues.is_empty() {
        Ok(sources)
    } else {
        Err(RulesError { issues })
    }
}

/// `*` matches any run of characters (including none); everything else is literal.
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return name.is_empty(),
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}
