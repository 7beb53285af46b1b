//! Unit tests for the rules engine: evaluation semantics (`eval`), load errors (`errors`),
//! the shipped `lua-free-rules/` directory (`shipped`) and never-panic properties (`props`).

mod errors;
mod eval;
mod props;
mod shipped;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{compile, BodyFacts, KeyInfo, KnownNames, RuleInput, RuleSet, RuleSource, RulesError};

pub(super) fn known() -> KnownNames {
    KnownNames::new(
        ["vllm-a", "trtllm-b", "vllm-canary"],
        ["llama-3.1-8b", "mistral-7b", "text-embedding-small"],
    )
}

pub(super) fn try_rules(text: &str) -> Result<RuleSet, RulesError> {
    compile(
        &[RuleSource {
            path: "rules/t.toml".into(),
            text: text.to_string(),
        }],
        &known(),
    )
}

pub(super) fn rules(text: &str) -> RuleSet {
    try_rules(text).unwrap_or_else(|e| panic!("{e}"))
}

/// An owned request to build `RuleInput`s from.
#[derive(Debug, Clone)]
pub(super) struct Req {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub ip: Option<IpAddr>,
    pub key_name: Option<String>,
    pub team: Option<String>,
    pub tags: Vec<String>,
    pub model: Option<String>,
    pub body: BodyFacts,
    pub id: String,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: HeaderMap::new(),
            ip: None,
            key_name: None,
            team: None,
            tags: Vec::new(),
            model: Some("llama-3.1-8b".into()),
            body: BodyFacts::default(),
            id: "req-1".into(),
        }
    }
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
        self
    }

    pub fn key(mut self, name: &str) -> Self {
        self.key_name = Some(name.into());
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }

    pub fn input(&self) -> RuleInput<'_> {
        RuleInput {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
            client_ip: self.ip,
            key: KeyInfo {
                name: self.key_name.as_deref(),
                team: self.team.as_deref(),
                tags: &self.tags,
            },
            model: self.model.as_deref(),
            body: self.body,
            request_id: &self.id,
        }
    }
}

/// Does a rule with this `when` match the request?
pub(super) fn matches(when: &str, req: &Req) -> bool {
    let set = rules(&format!(
        "[[rules]]\nname = \"r\"\nwhen = {when}\nactions = []\n"
    ));
    !set.evaluate(&req.input()).matched.is_empty()
}
