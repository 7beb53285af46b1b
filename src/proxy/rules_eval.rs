//! Step 3 of admission: the rules in force, evaluated once on the request's facts.

use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::errors::ApiError;
use crate::routing::body::RequestFacts;
use crate::rules::{BodyFacts, KeyInfo, RuleInput};

/// Step 3: the rules' effects go into `ctx`; a `deny` refuses the request.
pub(super) fn apply_rules(
    session: &Session,
    ctx: &mut RequestCtx,
    facts: &RequestFacts,
) -> Result<RulesDecision, ApiError> {
    let mut decision = evaluate_rules(session, ctx, facts);
    match decision.deny.take() {
        Some(deny) => Err(ApiError::RuleDenied {
            status: deny.status,
            message: deny.message,
            code: deny.code,
        }),
        None => Ok(decision),
    }
}

/// What the rules in force decide for this request; header edits, tags and classes go into
/// `ctx`, the rest is returned.
pub(super) struct RulesDecision {
    deny: Option<crate::rules::Deny>,
    pub route_cluster: Option<String>,
    pub body_sets: Vec<(String, String)>,
}

fn evaluate_rules(session: &Session, ctx: &mut RequestCtx, facts: &RequestFacts) -> RulesDecision {
    let rules = ctx.config.rules.clone();
    if rules.is_empty() {
        return RulesDecision {
            deny: None,
            route_cluster: None,
            body_sets: Vec::new(),
        };
    }
    let header = session.req_header();
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let no_tags = Vec::new();
    let key = ctx.admission.key.as_deref();
    let input = RuleInput {
        method: header.method.as_str(),
        path: header.uri.path(),
        headers: &header.headers,
        client_ip,
        key: KeyInfo {
            name: key.map(|k| k.name.as_str()),
            team: key.and_then(|k| k.team.as_deref()),
            tags: key.map_or(&no_tags, |k| &k.tags),
        },
        model: Some(&facts.model),
        body: BodyFacts {
            stream: facts.stream,
            max_tokens: facts.max_tokens,
            max_completion_tokens: facts.max_completion_tokens,
            n: facts.n,
            temperature: facts.temperature,
            has_tools: facts.has_tools,
            prompt_bytes: facts.prompt_bytes as u64,
        },
        request_id: &ctx.request_id,
    };
    let outcome = rules.evaluate(&input);
    ctx.admission.rules.matched = outcome.matched.iter().map(|s| s.to_string()).collect();
    ctx.admission.rules.tags = outcome.tags;
    ctx.admission.rules.rate_limit_class = outcome.rate_limit_class;
    ctx.admission.rules.priority = outcome.priority;
    ctx.admission.rules.set_request_headers = outcome.set_request_headers;
    ctx.admission.rules.remove_request_headers = outcome.remove_request_headers;
    ctx.admission.rules.set_response_headers = outcome.set_response_headers;
    ctx.admission.rules.remove_response_headers = outcome.remove_response_headers;
    for tag in &ctx.admission.rules.tags {
        crate::metrics::RULE_TAGS.with_label_values(&[tag]).inc();
    }
    RulesDecision {
        deny: outcome.deny,
        route_cluster: outcome.route_cluster,
        body_sets: outcome.body_sets,
    }
}
