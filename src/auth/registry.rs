//! The runtime set of API keys.
//!
//! Reads (every request) are lock-free: one `ArcSwap` load and a hash-map lookup by the
//! SHA-256 of the presented key. Writes (create, update, rotate, delete, reload) are rare and
//! serialized by a mutex only writers take. Each write re-reads the keys file (so a key added
//! meanwhile by `tokengate key new` or a hand edit is not lost), applies the change, replaces
//! the file atomically and only then swaps the new set in: a failed write changes nothing in
//! memory, and a crash mid-write never leaves a corrupt file.
//!
//! Two processes writing at the same instant (the CLI and the admin API) are not locked
//! against each other; the later rename wins. Prefer the admin API while a gateway runs.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::atomic::write_atomically;
use super::changes::{apply_patch, validate_new, KeyAdminError, KeyPatch, NewKey};
use super::error::AuthError;
use super::file::{self, KeysFileError};
use super::key::ApiKey;
use super::secret::{generate_secret, plausible, BuildKeyHasher, KeyHash};

/// One immutable generation of keys, indexed both ways.
#[derive(Debug, Default)]
struct KeySet {
    by_hash: HashMap<KeyHash, Arc<ApiKey>, BuildKeyHasher>,
    /// Sorted, so `list` is stable.
    by_name: BTreeMap<String, Arc<ApiKey>>,
}

impl KeySet {
    fn new(keys: Vec<ApiKey>) -> Self {
        let mut set = KeySet {
            by_hash: HashMap::with_capacity_and_hasher(keys.len(), BuildKeyHasher::default()),
            by_name: BTreeMap::new(),
        };
        for key in keys {
            let key = Arc::new(key);
            set.by_hash.insert(key.hash, key.clone());
            set.by_name.insert(key.name.clone(), key);
        }
        set
    }
}

#[derive(Debug)]
pub struct KeyRegistry {
    path: PathBuf,
    current: ArcSwap<KeySet>,
    writer: Mutex<()>,
    /// Fleet mode: the keys come from the shared store (`replace_all`), not the file.
    remote: AtomicBool,
}

impl KeyRegistry {
    /// Loads the keys file; a missing file is an error (a wrong path must not silently mean
    /// "no keys").
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, KeysFileError> {
        let path = path.into();
        let keys = file::load(&path)?;
        Ok(Self::with_keys(path, keys))
    }

    /// Like `load`, but a missing file is an empty registry; the first write creates it
    /// (`tokengate key new` on a fresh install).
    pub fn load_or_empty(path: impl Into<PathBuf>) -> Result<Self, KeysFileError> {
        let path = path.into();
        let keys = read_or_empty(&path)?;
        Ok(Self::with_keys(path, keys))
    }

    fn with_keys(path: PathBuf, keys: Vec<ApiKey>) -> Self {
        KeyRegistry {
            path,
            current: ArcSwap::from_pointee(KeySet::new(keys)),
            writer: Mutex::new(()),
            remote: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file (config reload, after a hand edit). On error the current keys stay.
    /// Returns the number of keys now loaded.
    pub fn reload(&self) -> Result<usize, KeysFileError> {
        let _writer = self.lock_writer();
        if self.remote.load(Ordering::Acquire) {
            return Ok(self.len()); // fleet mode: Redis is the source, synced on its own
        }
        let keys = file::load(&self.path)?;
        let n = keys.len();
        self.current.store(Arc::new(KeySet::new(keys)));
        Ok(n)
    }

    /// The key a request presented (see `extract_presented_key`), if it is ours and usable.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        now_unix: u64,
    ) -> Result<Arc<ApiKey>, AuthError> {
        let presented = presented.ok_or(AuthError::Missing)?;
        if !plausible(presented) {
            return Err(AuthError::Unknown);
        }
        let hash = KeyHash::of(presented);
        let set = self.current.load();
        let key = set.by_hash.get(&hash).ok_or(AuthError::Unknown)?;
        if !key.enabled {
            return Err(AuthError::Disabled {
                name: key.name.clone(),
            });
        }
        if let Some(at) = key.expires_at.filter(|&at| now_unix >= at) {
            return Err(AuthError::Expired {
                name: key.name.clone(),
                at,
            });
        }
        Ok(key.clone())
    }

    pub fn get(&self, name: &str) -> Option<Arc<ApiKey>> {
        self.current.load().by_name.get(name).cloned()
    }

    /// Every key, sorted by name.
    pub fn list(&self) -> Vec<Arc<ApiKey>> {
        self.current.load().by_name.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.current.load().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates a key. Returns its secret — shown to the caller once, stored nowhere — and
    /// the stored key.
    pub fn create(
        &self,
        new: NewKey,
        now_unix: u64,
    ) -> Result<(String, Arc<ApiKey>), KeyAdminError> {
        let expires_at = validate_new(&new, now_unix)?;
        let secret = generate_secret().map_err(|e| self.io_error(e))?;
        let name = new.name.clone();
        self.mutate(|keys| {
            if keys.iter().any(|k| k.name == new.name) {
                return Err(KeyAdminError::Conflict(new.name));
            }
            keys.push(new.into_key(&secret, expires_at, now_unix));
            Ok(())
        })?;
        let key = self.stored(&name)?;
        Ok((secret.secret, key))
    }

    /// Changes a key's settings (not its name or secret).
    pub fn update(
        &self,
        name: &str,
        patch: &KeyPatch,
        now_unix: u64,
    ) -> Result<Arc<ApiKey>, KeyAdminError> {
        self.mutate(|keys| {
            let slot = find(keys, name)?;
            *slot = apply_patch(slot, patch, now_unix)?;
            Ok(())
        })?;
        self.stored(name)
    }

    /// Replaces a key's secret, keeping everything else; the old secret stops working at once.
    pub fn rotate(&self, name: &str) -> Result<(String, Arc<ApiKey>), KeyAdminError> {
        let secret = generate_secret().map_err(|e| self.io_error(e))?;
        self.mutate(|keys| {
            let slot = find(keys, name)?;
            slot.hash = secret.hash;
            slot.prefix = Some(secret.prefix);
            Ok(())
        })?;
        Ok((secret.secret, self.stored(name)?))
    }

    /// Removes a key; returns what it was.
    pub fn delete(&self, name: &str) -> Result<ApiKey, KeyAdminError> {
        self.mutate(|keys| {
            let i = keys
                .iter()
                .position(|k| k.name == name)
                .ok_or_else(|| KeyAdminError::NotFound(name.to_string()))?;
            Ok(keys.remove(i))
        })
    }

    /// Fleet mode: replaces the whole set with the shared store's (requests see the old set
    /// or the new one, never a mix). From then on `reload` leaves the set alone.
    pub fn replace_all(&self, keys: Vec<ApiKey>) {
        let _writer = self.lock_writer();
        self.remote.store(true, Ordering::Release);
        self.current.store(Arc::new(KeySet::new(keys)));
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects no data (the state is in the file and the ArcSwap), so a writer
        // that panicked leaves nothing inconsistent behind.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut Vec<ApiKey>) -> Result<T, KeyAdminError>,
    ) -> Result<T, KeyAdminError> {
        let _writer = self.lock_writer();
        let mut keys = read_or_empty(&self.path)?;
        let out = change(&mut keys)?;
        let text = file::render(&keys);
        write_atomically(&self.path, text.as_bytes()).map_err(|e| self.io_error(e))?;
        self.current.store(Arc::new(KeySet::new(keys)));
        Ok(out)
    }

    fn stored(&self, name: &str) -> Result<Arc<ApiKey>, KeyAdminError> {
        // Only reachable as NotFound if another writer deleted it in between.
        self.get(name)
            .ok_or_else(|| KeyAdminError::NotFound(name.to_string()))
    }

    fn io_error(&self, source: io::Error) -> KeyAdminError {
        KeyAdminError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn find<'a>(keys: &'a mut [ApiKey], name: &str) -> Result<&'a mut ApiKey, KeyAdminError> {
    keys.iter_mut()
        .find(|k| k.name == name)
        .ok_or_else(|| KeyAdminError::NotFound(name.to_string()))
}

fn read_or_empty(path: &Path) -> Result<Vec<ApiKey>, KeysFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => file::parse(&text, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(KeysFileError::unreadable(path, &e)),
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
