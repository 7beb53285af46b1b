//! The admin listener (loopback by default; never the client listener). `/metrics` and
//! `/health` are open for scrapers and probes; every `/admin/*` endpoint requires the admin
//! bearer token, compared in constant time. JSON everywhere, errors in the OpenAI shape.
//! `GET /admin/` is the status page (no data in it: it signs in with the token itself);
//! `GET /admin/events` streams (see [`server`]).

mod config_api;
mod events_api;
mod fleet_api;
mod fleet_mode_api;
mod keys_api;
mod reply;
mod requests_api;
mod runtime_api;
mod server;
mod status_page;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::state::AppState;
pub use reply::{error_reply, json_reply};
pub use server::AdminServer;

/// Largest admin request body (config documents, key definitions).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

pub struct AdminApp {
    state: Arc<AppState>,
    /// Fleet mode: keys, usage and reloads go through Redis.
    fleet: Option<Arc<crate::distributed::FleetLink>>,
}

impl AdminApp {
    pub fn new(state: Arc<AppState>) -> AdminApp {
        AdminApp { state, fleet: None }
    }

    pub fn with_fleet(mut self, link: Option<Arc<crate::distributed::FleetLink>>) -> AdminApp {
        self.fleet = link;
        self
    }

    /// `Err` carries the 401 to send.
    fn authorized(&self, session: &ServerSession) -> Result<(), Box<Response<Vec<u8>>>> {
        let token = self.state.admin_token();
        let Some(expected) = token.as_deref() else {
            return Err(Box::new(error_reply(
                StatusCode::UNAUTHORIZED,
                "The admin API is disabled: no admin token is configured (server.admin_token_file or TOKENGATE_ADMIN_TOKEN).",
                "admin_disabled",
            )));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(Box::new(error_reply(
                StatusCode::UNAUTHORIZED,
                "Missing or wrong admin token: send `Authorization: Bearer <admin token>`.",
                "invalid_admin_token",
            )))
        }
    }
}

/// Read a request body up to `MAX_ADMIN_BODY`.
/// `Err` carries the reply to send.
async fn read_body(session: &mut ServerSession) -> Result<Bytes, Box<Response<Vec<u8>>>> {
    let mut buf = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(piece)) => {
                if buf.len() + piece.len() > MAX_ADMIN_BODY {
                    return Err(Box::new(error_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Admin request body over 1 MiB.",
                        "request_too_large",
                    )));
                }
                buf.extend_from_slice(&piece);
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Err(e) => {
                return Err(Box::new(error_reply(
                    StatusCode::BAD_REQUEST,
                    &format!("Could not read the request body: {e}."),
                    "invalid_request",
                )))
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => {
                crate::metrics::observe_fleet(
                    &self.state.fleet.snapshot(std::time::Instant::now()),
                );
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(crate::metrics::render().into_bytes())
                    .unwrap_or_default()
            }
            ("GET", "/health") => json_reply(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "generation": self.state.generation(),
                    // Every replica was probed once since start.
                    "ready": self.state.probed_once.load(std::sync::atomic::Ordering::Acquire),
                }),
            ),
            ("GET", "/admin/" | "/admin") => status_page::page(),
            (_, p) if p.starts_with("/admin/") => {
                if let Err(denied) = self.authorized(session) {
                    return *denied;
                }
                self.admin(session, &method, &path).await
            }
            _ => not_found(&method, &path),
        }
    }
}

impl AdminApp {
    async fn admin(
        &self,
        session: &mut ServerSession,
        method: &str,
        path: &str,
    ) -> Response<Vec<u8>> {
        let scope_fleet = session
            .req_header()
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "scope=fleet"));
        let fleet = self.fleet.as_deref();
        match (method, path, fleet) {
            ("GET", "/admin/fleet", Some(link)) => fleet_mode_api::view(&self.state, link).await,
            ("GET", "/admin/usage", Some(link)) if scope_fleet => fleet_mode_api::usage(link).await,
            ("POST", "/admin/reload", Some(link)) if scope_fleet => {
                fleet_mode_api::reload(link).await
            }
            (_, "/admin/fleet", None) => error_reply(
                StatusCode::NOT_FOUND,
                "Fleet mode is off: the config has no [fleet] section.",
                "fleet_disabled",
            ),
            _ => self.single(session, method, path).await,
        }
    }

    async fn single(
        &self,
        session: &mut ServerSession,
        method: &str,
        path: &str,
    ) -> Response<Vec<u8>> {
        match (method, path) {
            ("GET", "/admin/config") => config_api::show(&self.state),
            ("POST", "/admin/config/validate") => match read_body(session).await {
                Ok(body) => config_api::validate(&body),
                Err(reply) => *reply,
            },
            ("POST", "/admin/reload") => config_api::reload(&self.state),
            (m, p) if runtime_api::handles(m, p) => {
                let body = if runtime_api::wants_body(m) {
                    match read_body(session).await {
                        Ok(b) => b,
                        Err(reply) => return *reply,
                    }
                } else {
                    Bytes::new()
                };
                runtime_api::handle(&self.state, m, p, &body)
            }
            ("GET", "/admin/replicas") => fleet_api::list(&self.state),
            ("GET", "/admin/requests") => {
                requests_api::list(&self.state, session.req_header().uri.query())
            }
            ("POST", p) if p.starts_with("/admin/replicas/") => {
                fleet_api::drain(&self.state, &p["/admin/replicas/".len()..])
            }
            ("GET", "/admin/usage") => {
                reply::json_reply(StatusCode::OK, &self.state.usage.snapshot())
            }
            (_, p) if p == "/admin/keys" || p.starts_with("/admin/keys/") => {
                let rest = p["/admin/keys".len()..].trim_start_matches('/');
                let body = if matches!(method, "POST" | "PATCH") {
                    match read_body(session).await {
                        Ok(b) => b,
                        Err(reply) => return *reply,
                    }
                } else {
                    Bytes::new()
                };
                match self.fleet.as_deref() {
                    Some(link) => {
                        fleet_mode_api::keys(&self.state, link, method, rest, &body).await
                    }
                    None => keys_api::handle(&self.state, method, rest, &body),
                }
            }
            _ => not_found(method, path),
        }
    }
}

fn not_found(method: &str, path: &str) -> Response<Vec<u8>> {
    error_reply(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {path})."),
        "unknown_url",
    )
}
