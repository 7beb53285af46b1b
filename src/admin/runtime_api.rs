//! Runtime changes over HTTP, the hook an autoscaler calls when it starts or stops a replica:
//! `POST /admin/clusters/{cluster}/replicas`, `DELETE /admin/clusters/{cluster}/replicas/{ip:port}`,
//! `PUT`/`DELETE /admin/clusters/{name}`, `PUT`/`DELETE /admin/models/{alias}` (written to the
//! overlay file, `config::overlay`) and `PUT /admin/config` (the whole config file).
//!
//! Every change is one critical section (`AppState::config_writes`): read the files, apply the
//! change, validate the merged result exactly like a load, write atomically, reload. A rejected
//! change writes nothing and leaves the running generation alone.

use std::net::SocketAddr;
use std::path::Path;

use http::{Response, StatusCode};
use serde_json::json;

use super::config_api::rejected;
use super::keys_api::bad_json;
use super::reply::{error_reply, json_reply};
use crate::auth::atomic::write_atomically;
use crate::config::overlay_edit::{Defined, OverlayDoc};
use crate::config::{self, Config};
use crate::state::AppState;

type Reply = Response<Vec<u8>>;

/// Whether `method path` is one of this module's routes.
pub fn handles(method: &str, path: &str) -> bool {
    match method {
        "PUT" if path == "/admin/config" => true,
        "POST" | "PUT" | "DELETE" => {
            path.starts_with("/admin/clusters/") || path.starts_with("/admin/models/")
        }
        _ => false,
    }
}

/// Whether the route reads a request body.
pub fn wants_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT")
}

pub fn handle(state: &AppState, method: &str, path: &str, body: &[u8]) -> Reply {
    if path == "/admin/config" {
        return put_config(state, body);
    }
    if let Some(alias) = path.strip_prefix("/admin/models/") {
        return match method {
            "PUT" => match table_of(body, "alias", alias) {
                Ok(t) => edit(state, |doc, _| {
                    doc.put_model(alias, t);
                    Ok(())
                }),
                Err(reply) => *reply,
            },
            "DELETE" => edit(state, |doc, current| {
                if current.route(alias).is_none() {
                    return refuse(not_found("model", alias));
                }
                let in_file = current.origins.file_models.iter().any(|m| m == alias);
                doc.remove_model(alias, Defined { in_file });
                Ok(())
            }),
            _ => method_not_allowed(method, path),
        };
    }
    let rest = path.strip_prefix("/admin/clusters/").unwrap_or("");
    match (method, rest.split_once('/')) {
        ("POST", Some((cluster, "replicas"))) => add_replica(state, cluster, body),
        ("DELETE", Some((cluster, tail))) => match tail.strip_prefix("replicas/") {
            Some(addr) => remove_replica(state, cluster, addr),
            None => method_not_allowed(method, path),
        },
        ("PUT", None) => match table_of(body, "name", rest) {
            Ok(t) => edit(state, |doc, _| {
                doc.put_cluster(rest, t);
                Ok(())
            }),
            Err(reply) => *reply,
        },
        ("DELETE", None) => edit(state, |doc, current| {
            if current.cluster(rest).is_none() {
                return refuse(not_found("cluster", rest));
            }
            let in_file = current.origins.file_clusters.iter().any(|c| c == rest);
            doc.remove_cluster(rest, Defined { in_file });
            Ok(())
        }),
        _ => method_not_allowed(method, path),
    }
}

fn add_replica(state: &AppState, cluster: &str, body: &[u8]) -> Reply {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewReplica {
        address: String,
    }
    let new: NewReplica = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => return bad_json(e),
    };
    edit(state, |doc, current| {
        let Some(c) = current.cluster(cluster) else {
            return refuse(not_found("cluster", cluster));
        };
        // A bad address is left to validation, which names the field.
        if let Ok(addr) = new.address.parse::<SocketAddr>() {
            if c.replicas.iter().any(|r| r.addr == addr) {
                return refuse(error_reply(
                    StatusCode::CONFLICT,
                    &format!("`{addr}` is already a replica of cluster `{cluster}`."),
                    "replica_exists",
                ));
            }
        }
        doc.add_replica(cluster, &new.address);
        Ok(())
    })
}

fn remove_replica(state: &AppState, cluster: &str, addr: &str) -> Reply {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            &format!("`{addr}` is not an ip:port address."),
            "invalid_replica",
        );
    };
    edit(state, |doc, current| {
        let known = current
            .cluster(cluster)
            .and_then(|c| c.replicas.iter().find(|r| r.addr == addr));
        let Some(replica) = known else {
            return refuse(not_found("replica", &format!("{cluster}/{addr}")));
        };
        doc.remove_replica(cluster, &replica.authority);
        Ok(())
    })
}

/// One overlay change: `change` sees the merged config now on disk and edits the overlay.
fn edit(
    state: &AppState,
    change: impl FnOnce(&mut OverlayDoc, &Config) -> Result<(), Box<Reply>>,
) -> Reply {
    let _writes = state
        .config_writes
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let path = state.config_path();
    let current = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            return rejected(
                &e,
                "The config on disk is invalid, fix it first; nothing changed",
            )
        }
    };
    let overlay_path = current.origins.overlay_file.clone();
    let mut doc = match read_overlay(&overlay_path) {
        Ok(doc) => doc,
        Err(reply) => return *reply,
    };
    if let Err(reply) = change(&mut doc, &current) {
        return *reply;
    }
    let text = doc.render();
    if let Err(e) = config::load_with_overlay(path, &text) {
        let what = format!(
            "Change rejected, nothing changed (lines in {} are those it would have had)",
            overlay_path.display()
        );
        return rejected(&e, &what);
    }
    write_and_reload(state, &overlay_path, text.as_bytes())
}

fn read_overlay(path: &Path) -> Result<OverlayDoc, Box<Reply>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Box::new(file_error(path, &e))),
    };
    OverlayDoc::parse(&text).map_err(|message| {
        Box::new(error_reply(
            StatusCode::CONFLICT,
            &format!(
                "The overlay file {} is invalid ({message}); fix it first, nothing changed.",
                path.display()
            ),
            "invalid_overlay",
        ))
    })
}

/// `PUT /admin/config`: a whole new config file (TOML), validated with the overlay merged, like
/// `tokengate check`.
fn put_config(state: &AppState, body: &[u8]) -> Reply {
    let Ok(text) = std::str::from_utf8(body) else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "The config document is not UTF-8.",
            "invalid_config",
        );
    };
    let _writes = state
        .config_writes
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let path = state.config_path();
    if let Err(e) = config::parse_merged(text, path, None) {
        return rejected(
            &e,
            &format!(
                "Config rejected; the file and generation {} are unchanged",
                state.generation()
            ),
        );
    }
    write_and_reload(state, path, body)
}

fn write_and_reload(state: &AppState, file: &Path, bytes: &[u8]) -> Reply {
    if let Err(e) = write_atomically(file, bytes) {
        return file_error(file, &e);
    }
    match state.reload("admin") {
        Ok(reloaded) => json_reply(
            StatusCode::OK,
            &json!({
                "generation": reloaded.generation,
                "written": file.display().to_string(),
                "changes": reloaded.changes,
                "warning": reloaded.warning,
            }),
        ),
        Err(e) => rejected(
            &e,
            &format!(
                "{} was written but the reload failed; generation {} stays in force",
                file.display(),
                state.generation()
            ),
        ),
    }
}

/// A JSON object body as the TOML table of a `[[clusters]]` / `[[models]]` section; its
/// `key` (`name` / `alias`), if given, must match the URL's.
fn table_of(body: &[u8], key: &str, name: &str) -> Result<toml::Table, Box<Reply>> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Box::new(bad_json(e)))?;
    if let Some(given) = value.get(key) {
        if given.as_str() != Some(name) {
            return Err(Box::new(error_reply(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The body's `{key}` ({given}) differs from the URL's (`{name}`); omit it."
                ),
                "name_mismatch",
            )));
        }
    }
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(_) => Err(Box::new(error_reply(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON object with the fields of the config file's section.",
            "invalid_request",
        ))),
        Err(e) => Err(Box::new(error_reply(
            StatusCode::BAD_REQUEST,
            &format!("The body cannot be a config section: {e} (null values are not allowed; omit the field)."),
            "invalid_request",
        ))),
    }
}

fn file_error(path: &Path, e: &std::io::Error) -> Reply {
    error_reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("Cannot write {}: {e}; nothing changed.", path.display()),
        "config_write_failed",
    )
}

/// A change refused before anything is written.
fn refuse(reply: Reply) -> Result<(), Box<Reply>> {
    Err(Box::new(reply))
}

fn not_found(what: &str, name: &str) -> Reply {
    error_reply(
        StatusCode::NOT_FOUND,
        &format!("No {what} `{name}` in the running config."),
        &format!("{}_not_found", what.to_lowercase()),
    )
}

fn method_not_allowed(method: &str, path: &str) -> Reply {
    error_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not supported on {path}."),
        "method_not_allowed",
    )
}
