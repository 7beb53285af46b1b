//! The Ollama-shaped writer of [`ApiError`], for the `/api/*` endpoints: the same errors,
//! statuses and headers as the OpenAI writer, in the body Ollama's clients parse:
//! `{"error":"..."}`.

use bytes::Bytes;

use super::ApiError;

impl ApiError {
    /// The message as Ollama words it where its clients match on it (an unknown model).
    pub fn ollama_message(&self) -> String {
        match self {
            ApiError::ModelNotFound { model } => format!("model '{model}' not found"),
            other => other.to_string(),
        }
    }

    pub fn to_ollama_json(&self) -> Bytes {
        crate::ollama::error_body(&self.ollama_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;

    #[test]
    fn ollama_shape() {
        let e = ApiError::ModelNotFound { model: "x".into() };
        assert_eq!(
            &e.to_ollama_json()[..],
            br#"{"error":"model 'x' not found"}"#
        );
        let e = ApiError::Unauthorized(AuthError::Unknown);
        let v: serde_json::Value = serde_json::from_slice(&e.to_ollama_json()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
        assert_eq!(e.status(), 401);
        let e = ApiError::from(crate::ollama::RequestError::MissingModel);
        assert_eq!((e.status(), e.log_code()), (400, "missing_model"));
    }
}
