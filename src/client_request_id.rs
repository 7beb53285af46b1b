//! A client's own request id (`X-Request-ID` from aiperf, tracing setups, SDKs), kept beside
//! tokengate's: passed upstream and back to the client as `x-client-request-id`, and logged as
//! `client_request_id`. Only a bounded, printable value is passed on; anything else is dropped.

/// The header a client's id arrives in.
pub const CLIENT_HEADER: &str = "x-request-id";
/// The header it is passed on in (upstream and in the response).
pub const PASSED_ON_HEADER: &str = "x-client-request-id";
/// Longest id passed on, in bytes.
pub const MAX_LEN: usize = 128;

/// The client's id if it is 1..=128 bytes of visible ASCII (`!`..=`~`: no spaces, no control
/// or non-ASCII bytes, so it is safe in a header and a log line); `None` otherwise.
pub fn sanitize(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LEN
        && value.iter().all(|b| (b'!'..=b'~').contains(b));
    // Visible ASCII is UTF-8.
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn printable_ids_up_to_the_bound_pass_and_others_are_dropped() {
        assert_eq!(sanitize(b"run-7/req-42").as_deref(), Some("run-7/req-42"));
        let longest = "a".repeat(MAX_LEN);
        assert_eq!(sanitize(longest.as_bytes()), Some(longest.clone()));
        assert_eq!(sanitize(format!("{longest}a").as_bytes()), None);
        assert_eq!(sanitize(b""), None);
        assert_eq!(sanitize(b"has space"), None);
        assert_eq!(sanitize(b"tab\there"), None);
        assert_eq!(sanitize(b"new\r\nline"), None);
        assert_eq!(sanitize("caf\u{e9}".as_bytes()), None);
        assert_eq!(sanitize(b"nul\x00"), None);
        assert_eq!(sanitize(b"del\x7f"), None);
    }

    proptest! {
        #[test]
        fn whatever_passes_is_the_input_bounded_and_visible(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(id) = sanitize(&bytes) {
                prop_assert_eq!(id.as_bytes(), &bytes[..]);
                prop_assert!(id.len() <= MAX_LEN && !id.is_empty());
                prop_assert!(id.bytes().all(|b| b.is_ascii_graphic()));
            } else {
                prop_assert!(bytes.is_empty() || bytes.len() > MAX_LEN
                    || bytes.iter().any(|b| !b.is_ascii_graphic()));
            }
        }
    }
}
