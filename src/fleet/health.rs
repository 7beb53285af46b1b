//! The health state machine of one replica: active checks (probes) and passive ejection
//! (outcomes of real requests). Pure: time is passed in; `ReplicaState` keeps one of these
//! behind a tiny mutex.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::settings::{HealthSettings, PassiveSettings};

/// What the active checks believe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveState {
    /// Never passed a probe: gets no traffic (it may still be loading weights).
    Starting,
    Healthy,
    Unhealthy,
}

/// How one proxied request went, as far as the replica's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The replica answered deliberately, including 4xx: it is alive and serving.
    Ok,
    /// Connection refused, reset or TLS failure before anything was sent.
    ConnectFailed,
    /// Connect or first-byte timeout.
    Timeout,
    /// 500, 502, 503 or 504 from the replica (engine dead, scaling, overloaded).
    Upstream5xx,
    /// The response broke off mid-stream (EOF without `[DONE]`, reset).
    StreamBroken,
    /// Says nothing about the replica (the client went away, the proxy gave up).
    Neutral,
}

impl Outcome {
    /// Classify a response status. 501/505 are deliberate answers about the request, not
    /// signs of a sick server.
    pub fn from_status(status: u16) -> Outcome {
        match status {
            500 | 502 | 503 | 504 => Outcome::Upstream5xx,
            _ => Outcome::Ok,
        }
    }

    fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Outcome::Ok | Outcome::Neutral => None,
            Outcome::ConnectFailed => Some(ErrorKind::ConnectFailed),
            Outcome::Timeout => Some(ErrorKind::Timeout),
            Outcome::Upstream5xx => Some(ErrorKind::Upstream5xx),
            Outcome::StreamBroken => Some(ErrorKind::StreamBroken),
        }
    }
}

/// Kind of the last error seen on a replica (admin view, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    ConnectFailed,
    Timeout,
    #[serde(rename = "upstream_5xx")]
    Upstream5xx,
    StreamBroken,
    ProbeFailed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Upstream5xx => "upstream_5xx",
            ErrorKind::StreamBroken => "stream_broken",
            ErrorKind::ProbeFailed => "probe_failed",
        }
    }
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Probes admitted the replica (from `Starting` or `Unhealthy`).
    Up { from: ActiveState },
    /// Probes took it out (always from `Healthy`; a `Starting` replica that fails its
    /// probes stays `Starting`).
    Down { from: ActiveState },
    /// Passive ejection began; passing probes do not shorten it (only a death and return the
    /// probes saw does). It lasts `cooldown`, then the replica
    /// is on probation (its next failed request ejects it again, for longer).
    Ejected { cooldown: Duration },
}

/// The thresholds one replica is judged by; replaced on config reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRules {
    pub active_checks: bool,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub passive: PassiveSettings,
}

impl HealthRules {
    pub fn new(health: &HealthSettings, passive: &PassiveSettings) -> HealthRules {
        HealthRules {
            active_checks: health.enabled,
            unhealthy_after: health.unhealthy_after,
            healthy_after: health.healthy_after,
            passive: passive.clone(),
        }
    }
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            active_checks: true,
            unhealthy_after: 1,
            healthy_after: 2,
            passive: PassiveSettings::default(),
        }
    }
}

/// Passive-ejection view for the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveState {
    /// Taking traffic normally.
    Closed,
    /// Ejected until the given instant.
    Ejected { until: Instant },
    /// Cool-down over (or a probe passed): taking traffic, one failure re-ejects.
    Probation,
}

#[derive(Debug, Clone)]
pub struct HealthCore {
    rules: HealthRules,
    active: ActiveState,
    probe_ok_streak: u32,
    probe_fail_streak: u32,
    request_fail_streak: u32,
    /// End of the latest ejection; kept after the cool-down ends, until a request succeeds
    /// or `reset_after` passes: a recent past `until` means probation ("half-open").
    ejected_until: Option<Instant>,
    /// When the previous ejection ended, to decide whether the cool-down keeps growing.
    last_ejection_end: Option<Instant>,
    /// Ejections in a row without a calm `reset_after` in between; sets the cool-down.
    growth: u32,
    ejections: u64,
}

impl HealthCore {
    pub fn new(rules: HealthRules) -> HealthCore {
        let active = if rules.active_checks {
            ActiveState::Starting
        } else {
            ActiveState::Healthy
        };
        HealthCore {
            rules,
            active,
            probe_ok_streak: 0,
            probe_fail_streak: 0,
            request_fail_streak: 0,
            ejected_until: None,
            last_ejection_end: None,
            growth: 0,
            ejections: 0,
        }
    }

    /// Apply new thresholds (config reload) without forgetting the replica's history.
    pub fn set_rules(&mut self, rules: HealthRules) {
        if !rules.active_checks {
            // Nothing will ever probe it again, so nothing could ever admit it.
            self.active = ActiveState::Healthy;
        }
        self.rules = rules;
    }

    pub fn rules(&self) -> &HealthRules {
        &self.rules
    }

    pub fn active(&self) -> ActiveState {
        self.active
    }

    /// Total ejections so far (active and passive).
    pub fn ejections(&self) -> u64 {
        self.ejections
    }

    pub fn passive(&self, now: Instant) -> PassiveState {
        match self.ejected_until {
            None => PassiveState::Closed,
            Some(until) if now < until => PassiveState::Ejected { until },
            // Probation does not last for ever: a replica that stayed in (with no traffic
            // to prove itself) for a whole calm period is trusted again.
            Some(until)
                if now.saturating_duration_since(until) < self.rules.passive.reset_after =>
            {
                PassiveState::Probation
            }
            Some(_) => PassiveState::Closed,
        }
    }

    /// Healthy by probes and not passively ejected (draining is the caller's business).
    pub fn is_available(&self, now: Instant) -> bool {
        self.active == ActiveState::Healthy
            && !matches!(self.passive(now), PassiveState::Ejected { .. })
    }

    /// Feed one probe result.
    pub fn on_probe(&mut self, success: bool, now: Instant) -> Option<Transition> {
        if success {
            self.probe_fail_streak = 0;
            self.probe_ok_streak = self.probe_ok_streak.saturating_add(1);
            let needed = match self.active {
                ActiveState::Starting => 1,
                _ => self.rules.healthy_after.max(1),
            };
            if self.active != ActiveState::Healthy && self.probe_ok_streak >= needed {
                let from = self.active;
                self.active = ActiveState::Healthy;
                // A fresh admission wipes the failure streak. Passing probes alone never end
                // a passive ejection (a replica can pass `/health` and fail every request),
                // but one the probes saw die and come back (a restart) starts afresh, on
                // probation: its next failure ejects it again, for longer.
                self.request_fail_streak = 0;
                if from == ActiveState::Unhealthy && self.ejected_until.is_some_and(|u| now < u) {
                    self.ejected_until = Some(now);
                    self.last_ejection_end = Some(now);
                }
                return Some(Transition::Up { from });
            }
            None
        } else {
            self.probe_ok_streak = 0;
            self.probe_fail_streak = self.probe_fail_streak.saturating_add(1);
            // A starting replica failing its probes is just still booting (vLLM refuses
            // connections while it loads weights): it stays "starting", without a log line
            // per probe, until it passes once.
            if self.active == ActiveState::Healthy
                && self.probe_fail_streak >= self.rules.unhealthy_after.max(1)
            {
                self.active = ActiveState::Unhealthy;
                self.ejections = self.ejections.saturating_add(1);
                return Some(Transition::Down {
                    from: ActiveState::Healthy,
                });
            }
            None
        }
    }

    /// Feed the outcome of one proxied request. Returns the error kind to record, if any,
    /// and the transition, if any.
    pub fn on_request_outcome(
        &mut self,
        outcome: Outcome,
        now: Instant,
    ) -> (Option<ErrorKind>, Option<Transition>) {
        let kind = outcome.error_kind();
        match outcome {
            Outcome::Neutral => return (None, None),
            Outcome::Ok => {
                self.request_fail_streak = 0;
                if let PassiveState::Probation = self.passive(now) {
                    // The probation request went through: back to normal.
                    self.last_ejection_end = self.ejected_until.take();
                }
                return (None, None);
            }
            _ => {}
        }
        let failures_needed = self.rules.passive.failures;
        if failures_needed == 0 {
            return (kind, None);
        }
        self.request_fail_streak = self.request_fail_streak.saturating_add(1);
        let transition = match self.passive(now) {
            // Requests that were already in flight when it was ejected: nothing to add.
            PassiveState::Ejected { .. } => None,
            PassiveState::Probation => Some(self.eject(now)),
            PassiveState::Closed if self.request_fail_streak >= failures_needed => {
                Some(self.eject(now))
            }
            PassiveState::Closed => None,
        };
        (kind, transition)
    }

    fn eject(&mut self, now: Instant) -> Transition {
        // Only ejections that follow each other closely escalate the cool-down.
        let calm = match self.ejected_until.or(self.last_ejection_end) {
            Some(end) => now.saturating_duration_since(end) >= self.rules.passive.reset_after,
            None => true,
        };
        if calm {
            self.growth = 0;
        }
        let cooldown = cooldown_for(&self.rules.passive, self.growth);
        self.growth = self.growth.saturating_add(1);
        self.ejected_until = Some(now + cooldown);
        self.request_fail_streak = 0;
        self.ejections = self.ejections.saturating_add(1);
        Transition::Ejected { cooldown }
    }
}

/// The error is this host's, not the replica's: out of file descriptors, buffers, memory or
/// local ports. It must never count against a replica's health, or an fd-exhaustion attack
/// on the proxy would also eject every replica.
pub fn is_local_resource_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// `base × 2^growth`, capped at `max`.
pub fn cooldown_for(passive: &PassiveSettings, growth: u32) -> Duration {
    let factor = 1u32.checked_shl(growth.min(31)).unwrap_or(u32::MAX);
    passive
        .base_cooldown
        .saturating_mul(factor)
        .min(passive.max_cooldown.max(passive.base_cooldown))
}

#[cfg(test)]
mod tests;
