//! `x-ratelimit-*` and `retry-after*` response headers, in OpenAI's formats.
//!
//! OpenAI writes reset times as Go `time.Duration` strings (`"6m0s"`, `"6.596s"`, `"120ms"`);
//! the official SDKs parse them, and `retry-after` / `retry-after-ms` drive their backoff.

use std::time::Duration;

/// The state of one minute bucket as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Headers for one response. `requests` / `tokens` come from the key's requests-per-minute
/// and tokens-per-minute buckets and are `None` when the key has no such limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub requests: Option<WindowState>,
    pub tokens: Option<WindowState>,
    /// Only on a 429 that waiting can cure.
    pub retry_after: Option<Duration>,
}

impl RateLimitHeaders {
    /// `(name, value)` pairs, lowercase names, in a stable order.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(8);
        if let Some(w) = self.requests {
            out.push(("x-ratelimit-limit-requests", w.limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", w.remaining.to_string()));
            out.push((
                "x-ratelimit-reset-requests",
                format_openai_duration(w.reset),
            ));
        }
        if let Some(w) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", w.limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", w.remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", format_openai_duration(w.reset)));
        }
        if let Some(wait) = self.retry_after {
            out.push(("retry-after", retry_after_seconds(wait).to_string()));
            out.push(("retry-after-ms", retry_after_millis(wait).to_string()));
            if wait > SDK_MAX_RETRY_AFTER {
                out.push(("x-should-retry", "false".to_string()));
            }
        }
        out
    }

    /// Writes (replacing) every header into an `http::HeaderMap`.
    pub fn write_to(&self, headers: &mut http::HeaderMap) {
        for (name, value) in self.pairs() {
            // Digits and duration strings are always valid header values.
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(http::HeaderName::from_static(name), v);
            }
        }
    }
}

/// The longest `retry-after` every official SDK honours (the OpenAI Node SDK and the Vercel
/// AI SDK ignore longer ones, the Python SDK above 120 s, and then burn their retries on 429s
/// that cannot succeed): beyond it a 429 says `x-should-retry: false`, which the OpenAI SDKs
/// obey at once.
pub const SDK_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// `retry-after`: whole seconds, rounded up, at least 1 (0 would invite an immediate retry
/// that is bound to fail).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// `retry-after-ms`: milliseconds, rounded up, at least 1.
pub fn retry_after_millis(wait: Duration) -> u64 {
    let ms = wait.as_millis() + u128::from(!wait.as_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// A duration as OpenAI writes it: Go's `time.Duration` format at millisecond precision,
/// rounded up (a reset time must not be early). `"0s"`, `"120ms"`, `"1s"`, `"6.596s"`,
/// `"6m0s"`, `"1h2m3s"`.
pub fn format_openai_duration(d: Duration) -> String {
    let ms = d.as_millis() + u128::from(!d.as_nanos().is_multiple_of(1_000_000));
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let total_secs = ms / 1_000;
    let frac = ms % 1_000;
    let (h, m, s) = (total_secs / 3_600, (total_secs / 60) % 60, total_secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        // Go trims trailing zeros of the fraction: 6.5s, 6.05s, 6.596s.
        let digits = format!("{frac:03}");
        out.push_str(&format!("{s}.{}s", digits.trim_end_matches('0')));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn go_style_durations() {
        assert_eq!(format_openai_duration(Duration::ZERO), "0s");
        assert_eq!(format_openai_duration(ms(120)), "120ms");
        assert_eq!(format_openai_duration(ms(1)), "1ms");
        assert_eq!(format_openai_duration(Duration::from_nanos(1)), "1ms");
        assert_eq!(format_openai_duration(ms(999)), "999ms");
        assert_eq!(format_openai_duration(ms(1_000)), "1s");
        assert_eq!(format_openai_duration(ms(6_596)), "6.596s");
        assert_eq!(format_openai_duration(ms(6_500)), "6.5s");
        assert_eq!(format_openai_duration(ms(6_050)), "6.05s");
        assert_eq!(format_openai_duration(ms(59_999)), "59.999s");
        assert_eq!(format_openai_duration(ms(60_000)), "1m0s");
        assert_eq!(format_openai_duration(ms(360_000)), "6m0s");
        assert_eq!(format_openai_duration(ms(66_500)), "1m6.5s");
        assert_eq!(format_openai_duration(ms(3_600_000)), "1h0m0s");
        assert_eq!(format_openai_duration(ms(3_723_000)), "1h2m3s");
        assert_eq!(format_openai_duration(ms(90_000_000)), "25h0m0s");
    }

    #[test]
    fn durations_round_up_to_the_millisecond() {
        assert_eq!(
            format_openai_duration(Duration::from_nanos(6_595_000_001)),
            "6.596s"
        );
        assert_eq!(
            format_openai_duration(Duration::from_micros(119_001)),
            "120ms"
        );
    }

    #[test]
    fn retry_after_rounds_up_with_a_floor() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(ms(1)), 1);
        assert_eq!(retry_after_seconds(ms(1_000)), 1);
        assert_eq!(retry_after_seconds(ms(1_001)), 2);
        assert_eq!(retry_after_seconds(ms(6_596)), 7);
        assert_eq!(retry_after_millis(Duration::ZERO), 1);
        assert_eq!(retry_after_millis(Duration::from_micros(6_595_001)), 6_596);
    }

    #[test]
    fn headers_are_written_only_for_configured_limits() {
        let h = RateLimitHeaders {
            requests: Some(WindowState {
                limit: 60,
                remaining: 59,
                reset: ms(1_000),
            }),
            tokens: None,
            retry_after: None,
        };
        assert_eq!(
            h.pairs(),
            vec![
                ("x-ratelimit-limit-requests", "60".to_string()),
                ("x-ratelimit-remaining-requests", "59".to_string()),
                ("x-ratelimit-reset-requests", "1s".to_string()),
            ]
        );
        let mut map = http::HeaderMap::new();
        RateLimitHeaders {
            tokens: Some(WindowState {
                limit: 10_000,
                remaining: 0,
                reset: ms(6_596),
            }),
            retry_after: Some(ms(6_596)),
            ..h
        }
        .write_to(&mut map);
        assert_eq!(map["x-ratelimit-reset-tokens"], "6.596s");
        assert_eq!(map["retry-after"], "7");
        assert_eq!(map["retry-after-ms"], "6596");
        assert_eq!(map.len(), 8);
        assert!(RateLimitHeaders::default().pairs().is_empty());
        let long = RateLimitHeaders {
            retry_after: Some(ms(60_001)),
            ..RateLimitHeaders::default()
        };
        assert!(long
            .pairs()
            .contains(&("x-should-retry", "false".to_string())));
        let short = RateLimitHeaders {
            retry_after: Some(ms(60_000)),
            ..RateLimitHeaders::default()
        };
        assert!(short.pairs().iter().all(|(k, _)| *k != "x-should-retry"));
    }
}
