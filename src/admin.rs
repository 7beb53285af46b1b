//! The admin listener (loopback by default, never the client listener): `/metrics` and the
//! proxy's liveness. Operations endpoints grow here.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::errors::error_body;
use crate::state::AppState;

pub struct AdminApp {
    state: Arc<AppState>,
}

impl AdminApp {
    pub fn new(state: Arc<AppState>) -> AdminApp {
        AdminApp { state }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                crate::metrics::render().into_bytes(),
            ),
            ("GET", "/health") => {
                let body = serde_json::json!({
                    "status": "ok",
                    "generation": self.state.generation(),
                });
                respond(
                    StatusCode::OK,
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                error_body(
                    &format!("Invalid URL ({method} {path})."),
                    "invalid_request_error",
                    None,
                    Some("unknown_url"),
                )
                .to_vec(),
            ),
        }
    }
}
