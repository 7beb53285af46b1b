//! Validation of the request-body memory budget, with its default derived from the memory
//! available.

use super::file;
use super::validate::Validator;
use crate::ratelimit::body_budget::{self, BudgetLimits};

impl Validator<'_> {
    /// The body-bytes budget: configured, or derived from the memory available.
    pub(super) fn body_budget(&mut self, s: &file::ServerSection, max_body: u64) -> BudgetLimits {
        let total = match &s.max_buffered_body_bytes {
            Some(v) if *v.get_ref() == 0 => {
                self.fail(v, "server.max_buffered_body_bytes", "must be at least 1");
                1
            }
            Some(v) => *v.get_ref(),
            None => body_budget::default_total(available_memory()),
        };
        let per_key = match &s.max_buffered_body_bytes_per_key {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > total => {
                let message = "must be between 1 and server.max_buffered_body_bytes";
                self.fail(v, "server.max_buffered_body_bytes_per_key", message);
                total
            }
            Some(v) => *v.get_ref(),
            None => (total / 4).max(max_body).min(total),
        };
        BudgetLimits { total, per_key }
    }
}

/// Memory this process may use: its cgroup's `memory.max`, else `MemTotal`.
fn available_memory() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let meminfo = || {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    cgroup.or_else(meminfo)
}
