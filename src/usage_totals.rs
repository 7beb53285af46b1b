//! Usage counters since process start, per key name, per model alias and per endpoint, for
//! `GET /admin/usage`. Lock-free on the hot path: one `DashMap` read and three atomic adds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use serde::Serialize;

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Counters {
    fn add(&self, prompt: u64, completion: u64) {
        // Relaxed: independent counters read only for reporting.
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    fn read(&self) -> UsageCounts {
        let prompt_tokens = self.prompt_tokens.load(Ordering::Relaxed);
        let completion_tokens = self.completion_tokens.load(Ordering::Relaxed);
        UsageCounts {
            requests: self.requests.load(Ordering::Relaxed),
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageCounts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// The body of `GET /admin/usage`: sorted by name so the output is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageSnapshot {
    pub keys: BTreeMap<String, UsageCounts>,
    pub models: BTreeMap<String, UsageCounts>,
    /// By API surface (`chat_completions`, `messages`, ...): every surface's tokens also land
    /// in `keys` and `models`.
    pub endpoints: BTreeMap<String, UsageCounts>,
}

#[derive(Debug, Default)]
pub struct Usage {
    keys: DashMap<String, Counters>,
    models: DashMap<String, Counters>,
    endpoints: DashMap<String, Counters>,
}

fn add(map: &DashMap<String, Counters>, name: &str, prompt: u64, completion: u64) {
    if let Some(c) = map.get(name) {
        c.add(prompt, completion);
        return;
    }
    map.entry(name.to_string())
        .or_default()
        .add(prompt, completion);
}

impl Usage {
    pub fn new() -> Self {
        Self::default()
    }

    /// One finished request (whatever its status) and the tokens it used.
    pub fn record_usage(
        &self,
        key: &str,
        model: &str,
        endpoint: &str,
        prompt: u64,
        completion: u64,
    ) {
        add(&self.keys, key, prompt, completion);
        add(&self.models, model, prompt, completion);
        add(&self.endpoints, endpoint, prompt, completion);
    }

    pub fn snapshot(&self) -> UsageSnapshot {
        let read = |map: &DashMap<String, Counters>| {
            map.iter()
                .map(|e| (e.key().clone(), e.value().read()))
                .collect()
        };
        UsageSnapshot {
            keys: read(&self.keys),
            models: read(&self.models),
            endpoints: read(&self.endpoints),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_per_key_and_model() {
        let u = Usage::new();
        u.record_usage("ci-bot", "llama", "chat_completions", 10, 5);
        u.record_usage("ci-bot", "qwen", "chat_completions", 1, 2);
        u.record_usage("alice", "llama", "messages", 100, 0);
        let s = u.snapshot();
        assert_eq!(s.endpoints["chat_completions"].total_tokens, 18);
        assert_eq!(s.endpoints["messages"].requests, 1);
        assert_eq!(
            s.keys["ci-bot"],
            UsageCounts {
                requests: 2,
                prompt_tokens: 11,
                completion_tokens: 7,
                total_tokens: 18
            }
        );
        assert_eq!(s.models["llama"].requests, 2);
        assert_eq!(s.models["llama"].prompt_tokens, 110);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["keys"]["alice"]["total_tokens"], 100);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let u = Arc::new(Usage::new());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let u = u.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        u.record_usage("k", "m", "chat_completions", 3, 4);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = u.snapshot();
        assert_eq!(s.keys["k"].requests, 8_000);
        assert_eq!(s.models["m"].total_tokens, 56_000);
    }
}
