//! Rate limiting: continuous-refill token buckets per API key, per model alias and for the
//! whole gateway, concurrency caps, OpenAI-style `x-ratelimit-*` headers and 429 messages,
//! and usage counters. Pure shared state: no Pingora types; time is always passed in.
//!
//! Flow per request: `estimate_request_tokens` → `Limiter::admit` (429 on `RateLimited`) →
//! response headers from `Reservation::headers` → at the end `Reservation::settle` with the
//! metered tokens and `Usage::record_usage`.

pub mod body_budget;
pub mod bucket;
pub mod class;
pub mod connections;
pub mod headers;
pub mod lease;
pub mod lease_sync;
pub mod limiter;
pub mod limits;
pub mod slot;

pub use bucket::{Refusal, TokenBucket};
pub use headers::{
    format_openai_duration, retry_after_millis, retry_after_seconds, RateLimitHeaders, WindowState,
};
pub use limiter::{
    AdmissionRequest, KeyTicket, Limiter, RateLimited, Reservation, CONCURRENCY_RETRY_AFTER,
};
pub use limits::{Dimension, GlobalLimits, KeyLimits, LimitKind, ModelLimits, Scope};

/// Tokens to reserve before a request is sent: the prompt at about four bytes per token (the
/// usual ratio for English with BPE tokenizers; the body's JSON syntax makes it an
/// overestimate, which is the safe side) plus the completion budget — the request's
/// `max_tokens` (or `max_completion_tokens`) if given, else `default_completion_reservation`.
/// `settle` corrects it with the real count.
pub fn estimate_request_tokens(
    prompt_bytes: usize,
    max_tokens: Option<u64>,
    default_completion_reservation: u64,
) -> u64 {
    let prompt = crate::estimate::tokens_for(prompt_bytes as u64);
    prompt.saturating_add(max_tokens.unwrap_or(default_completion_reservation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate() {
        assert_eq!(estimate_request_tokens(0, None, 256), 256);
        assert_eq!(estimate_request_tokens(4_000, None, 256), 1_256);
        assert_eq!(estimate_request_tokens(4_001, Some(100), 256), 1_101);
        assert_eq!(estimate_request_tokens(3, Some(0), 256), 1);
        assert_eq!(
            estimate_request_tokens(usize::MAX, Some(u64::MAX), 0),
            u64::MAX
        );
    }
}
