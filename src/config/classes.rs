//! `[rate_limit_classes]`: validated into [`RateLimitClass`]es, and every class a rule names
//! checked against them (an unknown one rejects the config, so the running one stays).

use std::collections::HashMap;

use super::file::ConfigFile;
use super::model::RateLimitClass;
use super::validate::Validator;
use super::ConfigIssue;
use crate::ratelimit::KeyLimits;

impl Validator<'_> {
    /// `[rate_limit_classes]`; every class a rule names must be one of them.
    pub(super) fn rate_limit_classes(
        &mut self,
        raw: &ConfigFile,
        rules: &crate::rules::RuleSet,
    ) -> HashMap<String, RateLimitClass> {
        let mut out = HashMap::new();
        for (name, section) in &raw.rate_limit_classes {
            let field = format!("rate_limit_classes.{name}");
            let c = section.get_ref();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid_name {
                self.fail(section, &field, "class names are [A-Za-z0-9._-]{1,64}");
            }
            let g = c.global.unwrap_or_default();
            let limits = [
                c.requests_per_minute,
                c.tokens_per_minute,
                c.tokens_per_day,
                c.max_concurrent.map(u64::from),
                g.requests_per_minute,
                g.tokens_per_minute,
                g.max_concurrent.map(u64::from),
            ];
            if limits.contains(&Some(0)) {
                self.fail(
                    section,
                    &field,
                    "limits must be greater than 0 (omit a limit to disable it)",
                );
            }
            let per_key = KeyLimits {
                requests_per_minute: c.requests_per_minute,
                tokens_per_minute: c.tokens_per_minute,
                tokens_per_day: c.tokens_per_day,
                max_concurrent: c.max_concurrent,
            };
            let class = KeyLimits {
                requests_per_minute: g.requests_per_minute,
                tokens_per_minute: g.tokens_per_minute,
                tokens_per_day: None,
                max_concurrent: g.max_concurrent,
            };
            out.insert(name.clone(), RateLimitClass { per_key, class });
        }
        for class in rules.rate_limit_classes() {
            if !out.contains_key(class) {
                let known: Vec<&str> = raw.rate_limit_classes.keys().map(String::as_str).collect();
                self.issues.push(ConfigIssue {
                    file: self.at.path.to_path_buf(),
                    line: None,
                    column: None,
                    field: "rules".into(),
                    message: format!(
                        "a rule sets rate_limit_class `{class}`, which is not in \
                         [rate_limit_classes] (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
        out
    }
}
