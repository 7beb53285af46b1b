//! The recent-requests ring behind `GET /admin/requests`: the last N access-log records
//! (the same [`Entry`] the access log writes), newest first, filtered by key, model, status and
//! time.
//!
//! Writing costs a request one relaxed atomic increment and a push under one of
//! [`SHARDS`] mutexes chosen round-robin by that sequence number, so two requests finishing at
//! once almost never touch the same lock; the entry the push evicts is dropped after the lock
//! is released. Reading (admin only) merges the shards by sequence number. Every shard keeps
//! its last `ceil(capacity / SHARDS)` entries; as sequence numbers go round-robin, the union
//! always holds the newest `capacity` entries, and a query never returns more than `capacity`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::accesslog::Entry;

/// Lock shards of the ring.
pub const SHARDS: usize = 16;
/// `limit` when the query names none.
pub const DEFAULT_LIMIT: usize = 100;

struct Slot {
    seq: u64,
    entry: Arc<Entry>,
}

pub struct RecentRequests {
    shards: Box<[Mutex<VecDeque<Slot>>]>,
    next: AtomicU64,
    capacity: AtomicUsize,
}

impl RecentRequests {
    pub fn new(capacity: usize) -> RecentRequests {
        RecentRequests {
            shards: (0..SHARDS).map(|_| Mutex::new(VecDeque::new())).collect(),
            next: AtomicU64::new(0),
            capacity: AtomicUsize::new(capacity),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// A reload may change the size; shards shrink on their next push.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    fn per_shard(&self) -> usize {
        self.capacity().div_ceil(SHARDS)
    }

    /// Keep one finished request (the hot path: see the module doc).
    pub fn push(&self, entry: Entry) {
        let per_shard = self.per_shard();
        if per_shard == 0 {
            return;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            seq,
            entry: Arc::new(entry),
        };
        let shard = &self.shards[(seq % SHARDS as u64) as usize];
        let mut evicted = Vec::new();
        if let Ok(mut ring) = shard.lock() {
            // Kept in sequence order even when a thread took its number before another but
            // pushes after it (preempted in between): eviction then drops the oldest entry,
            // never one of the newest `capacity`. In order, this is a push at the back.
            let at = ring.partition_point(|s| s.seq < seq);
            ring.insert(at, slot);
            while ring.len() > per_shard {
                evicted.extend(ring.pop_front());
            }
        }
        drop(evicted);
    }

    /// The newest entries matching `filter`, newest first, at most `filter.limit` and at most
    /// the capacity.
    pub fn query(&self, filter: &Filter) -> Vec<Arc<Entry>> {
        let mut hits: Vec<(u64, Arc<Entry>)> = Vec::new();
        for shard in self.shards.iter() {
            if let Ok(ring) = shard.lock() {
                hits.extend(
                    ring.iter()
                        .filter(|s| filter.matches(&s.entry))
                        .map(|s| (s.seq, s.entry.clone())),
                );
            }
        }
        hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        // Entries older than the newest `capacity` may linger in a shard after a shrink.
        let newest = self.next.load(Ordering::Relaxed);
        let oldest_kept = newest.saturating_sub(self.capacity() as u64);
        hits.into_iter()
            .take_while(|(seq, _)| *seq >= oldest_kept)
            .take(filter.limit)
            .map(|(_, e)| e)
            .collect()
    }
}

/// `status=`: one code (`429`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    Class(u16),
}

/// A validated `GET /admin/requests` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub limit: usize,
    pub key: Option<String>,
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    /// RFC 3339 UTC with milliseconds, as the entries' `time`: entries at or after it.
    pub since: Option<String>,
}

/// A query parameter that is not valid, with what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{param}`: {message}")]
pub struct FilterError {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        param: param.to_string(),
        message: message.into(),
    }
}

impl Filter {
    /// Parse a query string (`limit=&key=&model=&status=&since=`, percent-encoded).
    /// `capacity` bounds `limit`.
    pub fn parse(query: Option<&str>, capacity: usize) -> Result<Filter, FilterError> {
        let mut filter = Filter {
            limit: DEFAULT_LIMIT.min(capacity.max(1)),
            key: None,
            model: None,
            status: None,
            since: None,
        };
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.iter().any(|s| *s == name) {
                return Err(bad(&name, "given more than once"));
            }
            seen.push(name.to_string());
            if value.is_empty() {
                return Err(bad(&name, "empty value"));
            }
            match name.as_ref() {
                "limit" => filter.limit = parse_limit(&value, capacity)?,
                "key" => filter.key = Some(value.into_owned()),
                "model" => filter.model = Some(value.into_owned()),
                "status" => filter.status = Some(parse_status(&value)?),
                "since" => filter.since = Some(parse_since(&value)?),
                other => {
                    return Err(bad(
                        other,
                        "unknown parameter (use limit, key, model, status, since)",
                    ))
                }
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, e: &Entry) -> bool {
        self.key.as_ref().is_none_or(|k| *k == e.key)
            && self.model.as_ref().is_none_or(|m| *m == e.model)
            && self.status.is_none_or(|s| match s {
                StatusFilter::Code(c) => c == e.status,
                StatusFilter::Class(h) => e.status / 100 == h,
            })
            // Both are fixed-width RFC 3339 UTC: text order is time order.
            && self.since.as_ref().is_none_or(|s| e.time.as_str() >= s.as_str())
    }
}

fn parse_limit(value: &str, capacity: usize) -> Result<usize, FilterError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=capacity).contains(&n) => Ok(n),
        _ => Err(bad(
            "limit",
            format!("`{value}` is not a number from 1 to {capacity} (server.recent_requests)"),
        )),
    }
}

fn parse_status(value: &str) -> Result<StatusFilter, FilterError> {
    let wrong = || {
        bad(
            "status",
            format!("`{value}` is not a status code (100-599) or class (1xx-5xx)"),
        )
    };
    let b = value.as_bytes();
    if b.len() == 3 && b[1..].eq_ignore_ascii_case(b"xx") && (b'1'..=b'5').contains(&b[0]) {
        return Ok(StatusFilter::Class(u16::from(b[0] - b'0')));
    }
    match value.parse::<u16>() {
        Ok(code) if b.len() == 3 && (100..=599).contains(&code) => Ok(StatusFilter::Code(code)),
        _ => Err(wrong()),
    }
}

fn parse_since(value: &str) -> Result<String, FilterError> {
    humantime::parse_rfc3339_weak(value)
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .map_err(|_| {
            bad(
                "since",
                format!("`{value}` is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
            )
        })
}

#[cfg(test)]
mod tests;
