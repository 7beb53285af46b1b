//! What the gateway answers itself: `/api/tags` (the aliases a key may use), `/api/show`
//! (minimal model information), `/api/version`.

use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::request::RequestError;

/// The Ollama API version reported by `/api/version`: the one whose chat/generate/tags/show
/// shapes this translation follows.
pub const API_VERSION: &str = "0.12.0";

/// One alias as `/api/tags` and `/api/show` describe it.
pub struct ModelInfo<'a> {
    pub alias: &'a str,
    /// The config's `owned_by` (the family field).
    pub owned_by: &'a str,
    /// When the config was loaded (Ollama's `modified_at`).
    pub loaded_at: SystemTime,
}

pub fn version_json() -> Bytes {
    Bytes::from(json!({ "version": API_VERSION }).to_string())
}

fn details(m: &ModelInfo<'_>) -> Value {
    json!({
        "parent_model": "",
        "format": "",
        "family": m.owned_by,
        "families": [m.owned_by],
        "parameter_size": "",
        "quantization_level": "",
    })
}

fn modified_at(m: &ModelInfo<'_>) -> String {
    humantime::format_rfc3339_seconds(m.loaded_at).to_string()
}

/// `GET /api/tags`: `{"models":[{name, model, modified_at, size, digest, details}]}`.
pub fn tags_json<'a>(models: impl Iterator<Item = ModelInfo<'a>>) -> Bytes {
    let list: Vec<Value> = models
        .map(|m| {
            json!({
                "name": m.alias,
                "model": m.alias,
                "modified_at": modified_at(&m),
                "size": 0,
                "digest": "",
                "details": details(&m),
            })
        })
        .collect();
    Bytes::from(json!({ "models": list }).to_string())
}

#[derive(Deserialize)]
struct ShowRequest {
    model: Option<String>,
    /// The older name of `model`. (`verbose` and any other field change nothing here.)
    name: Option<String>,
}

/// The model `/api/show` asks about.
pub fn show_model(body: &[u8]) -> Result<String, RequestError> {
    let request: ShowRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    request
        .model
        .or(request.name)
        .filter(|m| !m.is_empty())
        .ok_or(RequestError::MissingModel)
}

/// `POST /api/show`: what the gateway knows of an alias (the replica's weights, template and
/// parameters are not the gateway's to report).
pub fn show_json(m: &ModelInfo<'_>) -> Bytes {
    Bytes::from(
        json!({
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": details(m),
            "model_info": {},
            "capabilities": ["completion", "tools"],
            "modified_at": modified_at(m),
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(alias: &str) -> ModelInfo<'_> {
        ModelInfo {
            alias,
            owned_by: "tokengate",
            loaded_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn tags_show_and_version() {
        let v: Value =
            serde_json::from_slice(&tags_json([info("a"), info("b")].into_iter())).unwrap();
        assert_eq!(v["models"][1]["name"], "b");
        assert_eq!(v["models"][0]["modified_at"], "1970-01-01T00:00:00Z");
        let v: Value = serde_json::from_slice(&show_json(&info("a"))).unwrap();
        assert_eq!(v["details"]["family"], "tokengate");
        assert_eq!(show_model(br#"{"model":"a"}"#).unwrap(), "a");
        assert_eq!(show_model(br#"{"name":"b"}"#).unwrap(), "b");
        assert_eq!(show_model(b"{}"), Err(RequestError::MissingModel));
        assert!(matches!(
            show_model(b"nope"),
            Err(RequestError::InvalidJson(_))
        ));
        let v: Value = serde_json::from_slice(&version_json()).unwrap();
        assert_eq!(v["version"], API_VERSION);
    }
}
