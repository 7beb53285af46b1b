//! Validation of a cluster's balancing, health, scrape and timeout settings.

use std::time::Duration;

use toml::Spanned;

use super::file::{
    ClusterSection, HealthSection, PassiveSection, QueueSection, ScoredSection, ScrapeSection,
    TimeoutSection,
};
use super::model::{ClusterTimeouts, Flavour, ServerSettings};
use super::validate::Validator;
use crate::fleet::{
    BalanceSettings, HealthSettings, PassiveSettings, Policy, QueueSettings, ScoreWeights,
    ScrapeSettings, Surface, Surfaces,
};

/// Everything of a cluster besides its name, flavour and replicas.
pub(super) struct ClusterSettings {
    pub health: HealthSettings,
    pub passive: PassiveSettings,
    pub scrape: ScrapeSettings,
    pub balance: BalanceSettings,
    pub affinity_header: Option<http::HeaderName>,
    pub timeouts: ClusterTimeouts,
    pub serves: Surfaces,
}

impl Validator<'_> {
    fn ms(&mut self, value: &Option<Spanned<u64>>, field: String, default: Duration) -> Duration {
        match value {
            Some(v) if *v.get_ref() == 0 => {
                self.fail(v, field, "must be greater than 0");
                default
            }
            Some(v) => Duration::from_millis(*v.get_ref()),
            None => default,
        }
    }

    fn http_path(
        &mut self,
        value: &Option<Spanned<String>>,
        field: String,
        default: &str,
    ) -> String {
        match value {
            Some(p) if !p.get_ref().starts_with('/') => {
                self.fail(p, field, "must start with `/`");
                default.to_string()
            }
            Some(p) => p.get_ref().clone(),
            None => default.to_string(),
        }
    }

    pub(super) fn cluster_settings(
        &mut self,
        c: &ClusterSection,
        i: usize,
        flavour: Flavour,
        server: &ServerSettings,
    ) -> ClusterSettings {
        let at = |f: &str| format!("clusters[{i}].{f}");
        let health = self.health_settings(c.health.as_ref(), flavour, &at);
        let passive = self.passive_settings(c.passive.as_ref(), &at);
        let mut scrape = self.scrape_settings(c.scrape.as_ref(), flavour, &at);
        let balance = self.balance_settings(c, flavour, &mut scrape, &at);
        let affinity_header = self.affinity_header(c, &at);
        let timeouts = self.cluster_timeouts(c.timeouts.as_ref(), server, &at);
        let serves = self.serves(c, flavour, &at);
        ClusterSettings {
            serves,
            health,
            passive,
            scrape,
            balance,
            affinity_header,
            timeouts,
        }
    }

    /// `serves`: the surfaces named, each known; default from the flavour.
    fn serves(
        &mut self,
        c: &ClusterSection,
        flavour: Flavour,
        at: &dyn Fn(&str) -> String,
    ) -> Surfaces {
        let Some(list) = &c.serves else {
            return Surfaces::for_flavour(flavour);
        };
        let mut set = Surfaces::default();
        for (j, name) in list.get_ref().iter().enumerate() {
            match Surface::parse(name.get_ref()) {
                Some(s) => set.insert(s),
                None => self.fail(
                    name,
                    at(&format!("serves[{j}]")),
                    format!(
                        "unknown surface `{}`; expected one of: {}",
                        name.get_ref(),
                        Surface::NAMES
                    ),
                ),
            }
        }
        set
    }

    /// `server.stored_responses`: 1-10000000.
    pub(super) fn stored_responses(&mut self, s: &super::file::ServerSection) -> usize {
        let n = *s.stored_responses.get_ref();
        if !(1..=10_000_000).contains(&n) {
            let message = "must be between 1 and 10000000";
            self.fail(&s.stored_responses, "server.stored_responses", message);
        }
        n.clamp(1, 10_000_000)
    }

    fn health_settings(
        &mut self,
        h: Option<&HealthSection>,
        flavour: Flavour,
        at: &dyn Fn(&str) -> String,
    ) -> HealthSettings {
        let mut health = HealthSettings::for_flavour(flavour);
        let Some(h) = h else { return health };
        health.enabled = h.enabled.unwrap_or(health.enabled);
        health.interval = self.ms(&h.interval_ms, at("health.interval_ms"), health.interval);
        health.timeout = self.ms(&h.timeout_ms, at("health.timeout_ms"), health.timeout);
        for (value, field, target) in [
            (
                &h.unhealthy_after,
                "health.unhealthy_after",
                &mut health.unhealthy_after,
            ),
            (
                &h.healthy_after,
                "health.healthy_after",
                &mut health.healthy_after,
            ),
        ] {
            if let Some(v) = value {
                if *v.get_ref() == 0 {
                    self.fail(v, at(field), "must be at least 1");
                } else {
                    *target = *v.get_ref();
                }
            }
        }
        health.path = self.http_path(&h.path, at("health.path"), &health.path);
        health.port = h.port;
        health
    }

    fn passive_settings(
        &mut self,
        p: Option<&PassiveSection>,
        at: &dyn Fn(&str) -> String,
    ) -> PassiveSettings {
        let mut passive = PassiveSettings::default();
        let Some(p) = p else { return passive };
        passive.failures = p.failures.unwrap_or(passive.failures);
        passive.base_cooldown = self.ms(
            &p.base_cooldown_ms,
            at("passive.base_cooldown_ms"),
            passive.base_cooldown,
        );
        passive.max_cooldown = self.ms(
            &p.max_cooldown_ms,
            at("passive.max_cooldown_ms"),
            passive.max_cooldown,
        );
        if passive.max_cooldown < passive.base_cooldown {
            if let Some(v) = &p.max_cooldown_ms {
                self.fail(
                    v,
                    at("passive.max_cooldown_ms"),
                    "must be at least base_cooldown_ms",
                );
            }
        }
        passive
    }

    fn scrape_settings(
        &mut self,
        s: Option<&ScrapeSection>,
        flavour: Flavour,
        at: &dyn Fn(&str) -> String,
    ) -> ScrapeSettings {
        let mut scrape = ScrapeSettings::for_flavour(flavour);
        let Some(s) = s else { return scrape };
        scrape.enabled = s.enabled.unwrap_or(true);
        scrape.interval = self.ms(&s.interval_ms, at("scrape.interval_ms"), scrape.interval);
        scrape.timeout = self.ms(&s.timeout_ms, at("scrape.timeout_ms"), scrape.timeout);
        scrape.path = self.http_path(&s.path, at("scrape.path"), &scrape.path);
        scrape.port = s.port;
        scrape
    }

    /// Balancing settings; the load-aware ones need scrape data, so they turn scraping on.
    fn balance_settings(
        &mut self,
        c: &ClusterSection,
        flavour: Flavour,
        scrape: &mut ScrapeSettings,
        at: &dyn Fn(&str) -> String,
    ) -> BalanceSettings {
        let mut balance = BalanceSettings {
            stale_after: scrape.stale_after(),
            policy: Policy::default_for(flavour),
            ..BalanceSettings::default()
        };
        // A scrape the operator switched off stays off under the default policy (`scored`
        // then works on our own counts); naming a scrape-fed policy turns it on.
        let scrape_off = c.scrape.as_ref().is_some_and(|s| s.enabled == Some(false));
        if let Some(p) = &c.policy {
            match Policy::parse(p.get_ref()) {
                Some(policy) => balance.policy = policy,
                None => self.fail(
                    p,
                    at("policy"),
                    format!(
                        "unknown policy `{}`; expected one of: {}",
                        p.get_ref(),
                        Policy::NAMES
                    ),
                ),
            }
        }
        let chosen = c.policy.is_some();
        if matches!(balance.policy, Policy::LoadAware | Policy::Scored) && (chosen || !scrape_off) {
            // Without data these degrade to in-flight counts; turn scraping on.
            scrape.enabled = true;
        }
        if let Some(section) = &c.scored {
            balance.weights = self.score_weights(section, at);
            if let Some(r) = &section.prefill_tokens_per_s {
                if (1.0..=1e9).contains(r.get_ref()) {
                    balance.prefill_tokens_per_s = *r.get_ref();
                } else {
                    self.fail(
                        r,
                        at("scored.prefill_tokens_per_s"),
                        "must be between 1 and 1e9",
                    );
                }
            }
        }
        if let Some(q) = &c.max_queue {
            if *q.get_ref() < 0.0 || !q.get_ref().is_finite() {
                self.fail(q, at("max_queue"), "must be a non-negative number");
            }
            balance.max_queue = Some(*q.get_ref());
            scrape.enabled = true;
        }
        if let Some(m) = &c.max_in_flight {
            if *m.get_ref() == 0 {
                self.fail(m, at("max_in_flight"), "must be at least 1");
            }
            balance.max_in_flight = Some(*m.get_ref());
        }
        if let Some(q) = &c.queue {
            balance.queue = self.queue_settings(q, at);
        }
        if let Some(f) = &c.bounded_load_factor {
            if !(1.0..=100.0).contains(f.get_ref()) {
                self.fail(
                    f,
                    at("bounded_load_factor"),
                    "must be between 1.0 and 100.0",
                );
            } else {
                balance.bounded_load_factor = *f.get_ref();
            }
        }
        balance
    }

    fn queue_settings(
        &mut self,
        q: &QueueSection,
        at: &dyn Fn(&str) -> String,
    ) -> Option<QueueSettings> {
        let depth = *q.max_depth.get_ref();
        let wait = *q.max_wait_ms.get_ref();
        if !(1..=100_000).contains(&depth) {
            self.fail(&q.max_depth, at("queue.max_depth"), "must be 1-100000");
            return None;
        }
        if !(1..=600_000).contains(&wait) {
            self.fail(&q.max_wait_ms, at("queue.max_wait_ms"), "must be 1-600000");
            return None;
        }
        Some(QueueSettings {
            max_depth: depth,
            max_wait: Duration::from_millis(wait),
        })
    }

    /// `[clusters.scored]`: each weight finite and in 0..=100, not all 0.
    fn score_weights(&mut self, s: &ScoredSection, at: &dyn Fn(&str) -> String) -> ScoreWeights {
        let mut w = ScoreWeights::default();
        for (value, name, slot) in [
            (&s.queue, "queue", &mut w.queue),
            (&s.kv, "kv", &mut w.kv),
            (&s.prefix, "prefix", &mut w.prefix),
        ] {
            if let Some(v) = value {
                if (0.0..=100.0).contains(v.get_ref()) {
                    *slot = *v.get_ref();
                } else {
                    self.fail(
                        v,
                        at(&format!("scored.{name}")),
                        "must be between 0 and 100",
                    );
                }
            }
        }
        if w.queue + w.kv + w.prefix == 0.0 {
            if let Some(v) = s.queue.as_ref().or(s.kv.as_ref()).or(s.prefix.as_ref()) {
                self.fail(v, at("scored"), "at least one weight must be above 0");
            }
        }
        w
    }

    fn affinity_header(
        &mut self,
        c: &ClusterSection,
        at: &dyn Fn(&str) -> String,
    ) -> Option<http::HeaderName> {
        let h = c.affinity_header.as_ref()?;
        match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.fail(h, at("affinity_header"), "not a valid HTTP header name");
                None
            }
        }
    }

    fn cluster_timeouts(
        &mut self,
        t: Option<&TimeoutSection>,
        server: &ServerSettings,
        at: &dyn Fn(&str) -> String,
    ) -> ClusterTimeouts {
        ClusterTimeouts {
            connect: self.ms(
                &t.and_then(|t| t.connect_ms.clone()),
                at("timeouts.connect_ms"),
                server.connect_timeout,
            ),
            read: self.ms(
                &t.and_then(|t| t.read_ms.clone()),
                at("timeouts.read_ms"),
                server.read_timeout,
            ),
            total: t
                .and_then(|t| t.total_ms.clone())
                .map(|v| self.ms(&Some(v), at("timeouts.total_ms"), Duration::MAX)),
        }
    }
}
