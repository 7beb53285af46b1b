//! `GET /admin/config`, `POST /admin/config/validate`, `POST /admin/reload`.

use std::path::Path;

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::reply::{field_errors_reply, json_reply};
use crate::config::{self, AccessLogTarget, Config, ConfigError};
use crate::state::AppState;

#[derive(Serialize)]
struct IssueView {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    field: String,
    message: String,
}

fn issues(e: &ConfigError) -> Vec<IssueView> {
    e.issues
        .iter()
        .map(|i| IssueView {
            file: i.file.display().to_string(),
            line: i.line,
            column: i.column,
            field: i.field.clone(),
            message: i.message.clone(),
        })
        .collect()
}

pub(super) fn rejected(e: &ConfigError, what: &str) -> Response<Vec<u8>> {
    field_errors_reply(
        &format!("{what}: {} error(s); see `errors`.", e.issues.len()),
        "invalid_config",
        &issues(e),
    )
}

/// The running config; secrets are never shown (only where they come from).
pub fn show(state: &AppState) -> Response<Vec<u8>> {
    let c = state.snapshot();
    json_reply(
        StatusCode::OK,
        &json!({
            "generation": state.generation(),
            "path": state.config_path().display().to_string(),
            "overlay": {
                "path": c.origins.overlay_file.display().to_string(),
                "present": c.origins.overlay_present,
                "removed_clusters": c.origins.removed_clusters,
                "removed_models": c.origins.removed_models,
            },
            "config": view(&c),
        }),
    )
}

fn view(c: &Config) -> serde_json::Value {
    let s = &c.server;
    json!({
        "server": {
            "listen": s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "admin_listen": s.admin_listen.to_string(),
            "threads": s.threads,
            "max_request_body_bytes": s.max_request_body_bytes,
            "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
            "read_timeout_ms": s.read_timeout.as_millis() as u64,
            "write_timeout_ms": s.write_timeout.as_millis() as u64,
            "client_body_timeout_ms": s.client_body_timeout.as_millis() as u64,
            "client_header_timeout_ms": s.client_header_timeout.as_millis() as u64,
            "client_read_buffer_bytes": s.client_read_buffer_bytes,
            "max_client_connections": s.connections.total,
            "max_client_connections_per_ip": s.connections.per_ip,
            "upstream_idle_timeout_ms": s.upstream_idle_timeout.as_millis() as u64,
            "connect_retries": s.connect_retries,
            "grace_period_seconds": s.grace_period_seconds,
            "graceful_shutdown_timeout_seconds": s.graceful_shutdown_timeout_seconds,
            "client_keepalive_seconds": s.client_keepalive_seconds,
            "admin_token": if s.admin_token_file.is_some() { "<redacted: from file>" } else { "<none>" },
            "access_log": match &s.access_log {
                AccessLogTarget::Stdout => "stdout".to_string(),
                AccessLogTarget::Off => "off".to_string(),
                AccessLogTarget::File(p) => p.display().to_string(),
            },
            "recent_requests": s.recent_requests,
        },
        "clusters": c.clusters.iter().map(|cl| json!({
            "name": cl.name,
            "flavour": cl.flavour.as_str(),
            "replicas": cl.replicas.iter().map(|r| r.authority.clone()).collect::<Vec<_>>(),
            "origin": c.origins.clusters.get(&cl.name),
        })).collect::<Vec<_>>(),
        "models": c.routes_in_order().map(|r| json!({
            "alias": r.alias,
            "cluster": r.cluster.name,
            "served_name": r.served_name,
            "expose_served_name": r.expose_served_name,
            "owned_by": r.owned_by,
            "origin": c.origins.models.get(&r.alias),
        })).collect::<Vec<_>>(),
    })
}

/// Check a TOML document without applying it.
pub fn validate(body: &[u8]) -> Response<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(body) else {
        return field_errors_reply(
            "The config document is not UTF-8.",
            "invalid_config",
            &Vec::<IssueView>::new(),
        );
    };
    match config::parse(text, Path::new("<request body>")) {
        Ok(c) => json_reply(
            StatusCode::OK,
            &json!({
                "valid": true,
                "clusters": c.clusters.len(),
                "replicas": c.clusters.iter().map(|c| c.replicas.len()).sum::<usize>(),
                "models": c.routes.len(),
            }),
        ),
        Err(e) => rejected(&e, "Config document rejected"),
    }
}

pub fn reload(state: &AppState) -> Response<Vec<u8>> {
    match state.reload("admin") {
        Ok(reloaded) => json_reply(StatusCode::OK, &reloaded),
        Err(e) => rejected(
            &e,
            &format!(
                "Reload rejected; generation {} stays in force",
                state.generation()
            ),
        ),
    }
}
