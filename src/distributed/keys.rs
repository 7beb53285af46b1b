//! API keys in Redis: one hash of records (hashes only, never secrets), a version counter
//! bumped in the same script as every write, and a notification on each change. Every
//! instance mirrors the whole set in its in-memory registry; the hot path reads only that.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::scripts::KEY_WRITE;
use super::{metrics, FleetError, FleetLink};
use crate::auth::changes::{apply_patch, validate_new};
use crate::auth::{file, generate_secret, ApiKey, KeyAdminError, KeyPatch, KeyRegistry, NewKey};
use crate::ratelimit::Limiter;

/// A key's record in Redis: its keys-file entry (`auth::file`), the one shape and
/// validation both stores share. Hashes only, never secrets.
fn record(key: &ApiKey) -> String {
    file::render_entry(key)
}

/// The key in a record read from Redis under `name`; `None` (logged) when it does not
/// validate or names another key.
fn from_record(name: &str, text: &str) -> Option<ApiKey> {
    let source = format!("redis keys record `{name}`");
    match file::parse_entry(text, std::path::Path::new(&source)) {
        Ok(key) if key.name == name => Some(key),
        Ok(key) => {
            log::error!("fleet: {source} holds key `{}`; skipped", key.name);
            None
        }
        Err(e) => {
            log::error!("fleet: skipped: {e}");
            None
        }
    }
}

/// A key write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FleetKeyError {
    #[error(transparent)]
    Key(#[from] KeyAdminError),
    #[error("The fleet's key store (Redis) is unreachable, so the change was not made on any instance; retry when it is back. ({0})")]
    Store(#[from] FleetError),
}

/// The version (`None`: never written, i.e. a new or wiped Redis) and every key in Redis,
/// read in one transaction.
pub async fn load_all(link: &FleetLink) -> Result<(Option<u64>, Vec<ApiKey>), FleetError> {
    let mut conn = link.conn()?;
    let (version, records): (Option<u64>, HashMap<String, String>) = link
        .timed(
            redis::pipe()
                .atomic()
                .get(link.names.keys_version())
                .hgetall(link.names.keys_hash())
                .query_async(&mut conn),
        )
        .await?;
    let mut keys = Vec::with_capacity(records.len());
    for (name, text) in records {
        keys.extend(from_record(&name, &text));
    }
    Ok((version, keys))
}

/// Swaps the registry's set for Redis's; forgets the buckets of keys that are gone.
pub fn apply(registry: &KeyRegistry, limiter: &Limiter, keys: Vec<ApiKey>, trigger: &str) {
    let before: BTreeSet<String> = registry.list().iter().map(|k| k.name.clone()).collect();
    let after: BTreeSet<String> = keys.iter().map(|k| k.name.clone()).collect();
    registry.replace_all(keys);
    for gone in before.difference(&after) {
        limiter.forget_key(gone);
    }
    metrics::KEY_SYNCS.with_label_values(&[trigger]).inc();
}

async fn write(link: &FleetLink, name: &str, json: &str, mode: &str) -> Result<u64, FleetError> {
    let mut conn = link.conn()?;
    let mut invocation = KEY_WRITE.prepare_invoke();
    invocation
        .key(link.names.keys_hash())
        .key(link.names.keys_version())
        .arg(name)
        .arg(json)
        .arg(mode)
        .arg(link.names.keys_channel());
    link.timed(invocation.invoke_async(&mut conn)).await
}

/// Creates a key in Redis; returns its secret (shown once) and the key.
pub async fn create(
    link: &FleetLink,
    new: NewKey,
    now_unix: u64,
) -> Result<(String, ApiKey), FleetKeyError> {
    let expires_at = validate_new(&new, now_unix)?;
    let secret = generate_secret().map_err(|e| FleetError::Unreachable(e.to_string()))?;
    let key = new.into_key(&secret, expires_at, now_unix);
    match write(link, &key.name, &record(&key), "create").await? {
        0 => Err(KeyAdminError::Conflict(key.name).into()),
        _ => Ok((secret.secret, key)),
    }
}

async fn get(link: &FleetLink, name: &str) -> Result<Option<String>, FleetError> {
    let mut conn = link.conn()?;
    link.timed(
        redis::cmd("HGET")
            .arg(link.names.keys_hash())
            .arg(name)
            .query_async(&mut conn),
    )
    .await
}

/// Changes a key in Redis (compare-and-set on the record; retried if another instance wrote
/// it in between).
pub async fn update(
    link: &FleetLink,
    name: &str,
    patch: &KeyPatch,
    now_unix: u64,
) -> Result<ApiKey, FleetKeyError> {
    for _ in 0..5 {
        let Some(old) = get(link, name).await? else {
            return Err(KeyAdminError::NotFound(name.to_string()).into());
        };
        let current = from_record(name, &old)
            .ok_or_else(|| FleetError::Unreachable(format!("key record `{name}` is malformed")))?;
        let changed = apply_patch(&current, patch, now_unix)?;
        let mode = format!("replace:{old}");
        if write(link, name, &record(&changed), &mode).await? != 0 {
            return Ok(changed);
        }
    }
    Err(FleetError::Unreachable(format!("key `{name}` kept changing; not updated")).into())
}

pub async fn delete(link: &FleetLink, name: &str) -> Result<(), FleetKeyError> {
    match write(link, name, "", "delete").await? {
        0 => Err(KeyAdminError::NotFound(name.to_string()).into()),
        _ => Ok(()),
    }
}

/// `tokengate key import`: writes every key of a keys file into Redis. Existing names are
/// kept unless `overwrite`. Returns (written, skipped).
pub async fn import(
    link: &FleetLink,
    keys: &[ApiKey],
    overwrite: bool,
) -> Result<(usize, usize), FleetError> {
    let mode = if overwrite { "put" } else { "create" };
    let (mut written, mut skipped) = (0, 0);
    for key in keys {
        if write(link, &key.name, &record(key), mode).await? == 0 {
            skipped += 1;
        } else {
            written += 1;
        }
    }
    Ok((written, skipped))
}

/// Loads the keys from Redis into `registry` if they changed since `applied` (or the
/// registry object changed, e.g. a reload pointing at another keys file). Returns the
/// version now applied.
pub async fn refresh(
    link: &FleetLink,
    registry: &Arc<KeyRegistry>,
    limiter: &Limiter,
    applied: Option<u64>,
    trigger: &str,
) -> Result<u64, FleetError> {
    if let Some(v) = applied {
        let mut conn = link.conn()?;
        let now: Option<u64> = link
            .timed(
                redis::cmd("GET")
                    .arg(link.names.keys_version())
                    .query_async(&mut conn),
            )
            .await?;
        if now.unwrap_or(0) == v {
            return Ok(v);
        }
    }
    let (version, keys) = load_all(link).await?;
    if version.is_none() && keys.is_empty() && !registry.is_empty() {
        // No version counter: this Redis never held keys or lost them (restarted without
        // persistence). Deleting every key leaves the counter, so this is never a deletion:
        // re-seed it from memory instead of locking every client out.
        let mine: Vec<ApiKey> = registry.list().iter().map(|k| (**k).clone()).collect();
        let (written, _) = import(link, &mine, false).await?;
        log::warn!("fleet: Redis has no keys (new or wiped); re-seeded {written} from memory");
        return Box::pin(refresh(link, registry, limiter, None, trigger)).await;
    }
    apply(registry, limiter, keys, trigger);
    Ok(version.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyHash;
    use crate::ratelimit::KeyLimits;

    #[test]
    fn records_round_trip_without_secrets() {
        let key = ApiKey {
            priority: 0,
            name: "acme".into(),
            hash: KeyHash::of("tg-secret"),
            prefix: Some("abcd".into()),
            team: Some("t".into()),
            tags: vec!["x".into()],
            models: vec![],
            enabled: true,
            expires_at: Some(10),
            limits: KeyLimits {
                requests_per_minute: Some(60),
                ..KeyLimits::default()
            },
            created_at: Some(1),
        };
        let text = record(&key);
        assert!(!text.contains("tg-secret"));
        assert_eq!(from_record("acme", &text), Some(key));
        // Another key's record under this name, or an invalid one, is skipped.
        assert_eq!(from_record("other", &text), None);
        assert_eq!(
            from_record("a", "[[keys]]\nname = \"a\"\nhash = \"zz\"\n"),
            None
        );
    }
}
