//! `GET /admin/`: the status page, one self-contained HTML file (no external assets, no
//! build step) embedded in the binary. It holds no data: it asks for the admin token, keeps it
//! in `sessionStorage`, and reads `/admin/events` (by `fetch` streaming, as `EventSource`
//! cannot send a header) and `/admin/requests` with it.

use http::{Response, StatusCode};

const PAGE: &str = include_str!("status.html");

pub fn page() -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", PAGE.len())
        .header("cache-control", "no-store")
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(PAGE.as_bytes().to_vec())
        .unwrap_or_default()
}
