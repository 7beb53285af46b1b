//! API keys: secrets (generated once, stored only as SHA-256), the keys file (TOML, validated
//! with file:line:field errors, replaced atomically), and the runtime `KeyRegistry` with
//! lock-free authentication and serialized admin changes. Pure: no Pingora types; time is
//! passed in as unix seconds.
//!
//! Per request: `extract_presented_key(headers)` → `KeyRegistry::authenticate(key, now_unix)`
//! (401 on `AuthError`) → `ApiKey::allows_model(alias)` → `ApiKey::limits` into the limiter.

pub mod atomic;
pub mod changes;
pub mod error;
pub mod file;
pub mod key;
pub mod registry;
pub mod secret;

pub use changes::{FieldError, KeyAdminError, KeyPatch, LimitsPatch, NewKey};
pub use error::AuthError;
pub use file::{KeysFileError, KeysFileIssue};
pub use key::{format_rfc3339, now_unix, parse_rfc3339, ApiKey, KeyStatus, KeyView};
pub use registry::KeyRegistry;
pub use secret::{extract_presented_key, generate_secret, KeyHash, NewSecret};
