//! Crash-safe file replacement: write a temp file in the same directory, fsync it, rename it
//! over the target, fsync the directory. Readers see the old file or the new one, never a
//! mix; a crash at any point leaves at worst a stray `.NAME.tmp.*` file that nothing reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically. The new file keeps the old one's permissions
/// (an operator's `chmod 640` survives); a new file is created `0600`.
///
/// On error the target is untouched, except in one case: the rename happened but the
/// directory fsync failed, so the new content is in place but not yet known to be durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_and_rename(&tmp, path, bytes);
    if result.is_err() {
        // Best effort: after a successful rename the temp name no longer exists.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `.keys.toml.tmp.<pid>.<random>` beside the target: same filesystem, so `rename` is atomic;
/// unique, so two processes writing at once cannot clobber each other's temp file.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` does not name a file", path.display()),
        )
    })?;
    let tmp = format!(
        ".{}.tmp.{}.{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        fastrand::u64(..)
    );
    Ok(dir_of(path).join(tmp))
}

fn write_and_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(tmp)?;
    file.write_all(bytes)?;
    if let Ok(meta) = fs::metadata(path) {
        file.set_permissions(meta.permissions())?;
    }
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)?;
    sync_dir(dir_of(path))
}

/// Makes the rename itself durable. Directories cannot be opened for fsync on every platform;
/// on those the rename is still atomic, only its durability is up to the OS.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keys.toml")]);
    }

    #[cfg(unix)]
    #[test]
    fn new_files_are_private_and_existing_permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        write_atomically(&path, b"a").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, b"b").unwrap();
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn failure_leaves_the_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("keys.toml");
        assert!(write_atomically(&missing, b"x").is_err());
        assert!(!missing.exists());
        // The target is a directory: the rename fails and the temp file is cleaned up.
        let target = dir.path().join("occupied");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        assert!(write_atomically(&target, b"x").is_err());
        assert!(target.is_dir());
        let count = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count, 1, "no temp file left behind");
    }
}
