use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use super::*;
use crate::auth::changes::LimitsPatch;
use crate::ratelimit::KeyLimits;

const NOW: u64 = 1_750_000_000;

fn fresh() -> (tempfile::TempDir, KeyRegistry) {
    let dir = tempfile::tempdir().unwrap();
    let reg = KeyRegistry::load_or_empty(dir.path().join("keys.toml")).unwrap();
    (dir, reg)
}

#[test]
fn create_then_authenticate() {
    let (_dir, reg) = fresh();
    let (secret, key) = reg
        .create(
            NewKey {
                priority: 0,
                models: vec!["llama".into()],
                team: Some("platform".into()),
                ..NewKey::named("ci-bot")
            },
            NOW,
        )
        .unwrap();
    assert!(secret.starts_with("tg-"));
    assert_eq!(key.created_at, Some(NOW));
    assert_eq!(key.prefix.as_deref(), Some(&secret[3..11]));
    let got = reg.authenticate(Some(&secret), NOW).unwrap();
    assert_eq!(got.name, "ci-bot");
    assert!(got.allows_model("llama") && !got.allows_model("qwen"));
    assert_eq!(reg.authenticate(None, NOW).unwrap_err(), AuthError::Missing);
    assert_eq!(
        reg.authenticate(Some("tg-nope"), NOW).unwrap_err(),
        AuthError::Unknown
    );
    let huge = "x".repeat(10_000);
    assert_eq!(
        reg.authenticate(Some(&huge), NOW).unwrap_err(),
        AuthError::Unknown
    );
    // Only the hash reaches the disk.
    let text = fs::read_to_string(reg.path()).unwrap();
    assert!(!text.contains(&secret));
    assert!(text.contains(&key.hash.to_string()));
    // A second process (or a restart) sees the same key.
    let again = KeyRegistry::load(reg.path()).unwrap();
    assert_eq!(again.authenticate(Some(&secret), NOW).unwrap(), key);
}

#[test]
fn disabled_and_expired_messages_name_the_key_not_the_secret() {
    let (_dir, reg) = fresh();
    let (secret, _) = reg
        .create(
            NewKey {
                priority: 0,
                expires_at: Some("2026-01-01T00:00:00Z".into()),
                ..NewKey::named("ci-bot")
            },
            NOW,
        )
        .unwrap();
    let expired = reg.authenticate(Some(&secret), 1_767_225_600).unwrap_err();
    assert_eq!(
        expired.to_string(),
        "API key `ci-bot` expired at 2026-01-01T00:00:00Z."
    );
    assert!(reg.authenticate(Some(&secret), 1_767_225_599).is_ok());
    let patch = KeyPatch {
        enabled: Some(false),
        ..KeyPatch::default()
    };
    reg.update("ci-bot", &patch, NOW).unwrap();
    let disabled = reg.authenticate(Some(&secret), NOW).unwrap_err();
    assert_eq!(disabled.to_string(), "API key `ci-bot` is disabled.");
    let unknown = reg.authenticate(Some("tg-wrongsecret"), NOW).unwrap_err();
    for e in [expired, disabled, unknown] {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains(&secret[3..]), "{shown}");
        assert!(!shown.contains("wrongsecret"), "{shown}");
    }
}

#[test]
fn admin_errors() {
    let (_dir, reg) = fresh();
    reg.create(NewKey::named("a"), NOW).unwrap();
    let e = reg.create(NewKey::named("a"), NOW).unwrap_err();
    assert!(
        matches!(e, KeyAdminError::Conflict(ref n) if n == "a"),
        "{e}"
    );
    assert_eq!(e.status(), 409);
    let e = reg.create(NewKey::named("a b"), NOW).unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.field_errors()[0].field, "name");
    let e = reg.update("nope", &KeyPatch::default(), NOW).unwrap_err();
    assert!(matches!(e, KeyAdminError::NotFound(_)));
    assert_eq!(e.to_string(), "API key `nope` does not exist");
    assert!(matches!(
        reg.delete("nope").unwrap_err(),
        KeyAdminError::NotFound(_)
    ));
    assert_eq!(reg.len(), 1, "failed requests changed nothing");
}

#[test]
fn update_rotate_delete() {
    let (_dir, reg) = fresh();
    let (secret, _) = reg.create(NewKey::named("k"), NOW).unwrap();
    let patch = KeyPatch {
        limits: Some(LimitsPatch {
            tokens_per_minute: Some(Some(10_000)),
            ..LimitsPatch::default()
        }),
        tags: Some(vec!["ci".into()]),
        ..KeyPatch::default()
    };
    let k = reg.update("k", &patch, NOW).unwrap();
    assert_eq!(k.limits.tokens_per_minute, Some(10_000));
    assert_eq!(k.tags, vec!["ci".to_string()]);
    assert_eq!(reg.authenticate(Some(&secret), NOW).unwrap(), k);

    let (new_secret, rotated) = reg.rotate("k").unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated.limits, k.limits);
    assert_eq!(
        reg.authenticate(Some(&secret), NOW),
        Err(AuthError::Unknown)
    );
    assert!(reg.authenticate(Some(&new_secret), NOW).is_ok());

    let gone = reg.delete("k").unwrap();
    assert_eq!(gone.name, "k");
    assert!(reg.get("k").is_none());
    assert_eq!(
        reg.authenticate(Some(&new_secret), NOW),
        Err(AuthError::Unknown)
    );
    assert!(KeyRegistry::load(reg.path()).unwrap().is_empty());
}

#[test]
fn failed_write_changes_nothing_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf");
    fs::create_dir(&sub).unwrap();
    let reg = KeyRegistry::load_or_empty(sub.join("keys.toml")).unwrap();
    let (secret, _) = reg.create(NewKey::named("keep"), NOW).unwrap();
    // The directory vanishes (unmounted volume, operator error): the write cannot happen.
    fs::remove_dir_all(&sub).unwrap();
    let e = reg.create(NewKey::named("new"), NOW).unwrap_err();
    assert!(matches!(e, KeyAdminError::Io { .. }), "{e}");
    assert_eq!(e.status(), 500);
    assert!(reg.get("new").is_none());
    assert!(reg.authenticate(Some(&secret), NOW).is_ok());
    assert_eq!(reg.len(), 1);
}

#[test]
fn missing_file_is_an_error_for_load_but_not_load_or_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let e = KeyRegistry::load(&path).unwrap_err();
    assert!(e.to_string().contains("cannot read keys file"), "{e}");
    assert!(KeyRegistry::load_or_empty(&path).unwrap().is_empty());
}

#[test]
fn reload_picks_up_edits_and_keeps_keys_on_a_bad_file() {
    let (_dir, reg) = fresh();
    let (secret, _) = reg.create(NewKey::named("a"), NOW).unwrap();
    let text = fs::read_to_string(reg.path()).unwrap();
    fs::write(
        reg.path(),
        text.replace("enabled = true", "enabled = false"),
    )
    .unwrap();
    assert_eq!(reg.reload().unwrap(), 1);
    assert!(matches!(
        reg.authenticate(Some(&secret), NOW),
        Err(AuthError::Disabled { .. })
    ));
    fs::write(reg.path(), "[[keys]]\nname = 1\n").unwrap();
    let e = reg.reload().unwrap_err();
    assert!(e.to_string().contains("keys.toml:2"), "{e}");
    assert!(reg.get("a").is_some(), "a bad file keeps the current keys");
    // Nor can a write go ahead on top of a file it cannot read.
    let e = reg.create(NewKey::named("b"), NOW).unwrap_err();
    assert!(matches!(e, KeyAdminError::File(_)), "{e}");
    assert_eq!(e.status(), 500);
    assert!(reg.get("b").is_none());
}

#[test]
fn a_stale_registry_does_not_lose_keys_written_by_another() {
    // The gateway (a) runs while the CLI (b) adds a key to the same file.
    let (_dir, a) = fresh();
    let b = KeyRegistry::load_or_empty(a.path()).unwrap();
    let (s1, _) = b.create(NewKey::named("from-cli"), NOW).unwrap();
    let (s2, _) = a.create(NewKey::named("from-api"), NOW).unwrap();
    assert!(a.authenticate(Some(&s1), NOW).is_ok());
    assert!(a.authenticate(Some(&s2), NOW).is_ok());
    let on_disk = KeyRegistry::load(a.path()).unwrap();
    assert_eq!(on_disk.len(), 2);
}

#[test]
fn concurrent_writers_are_serialized() {
    let (_dir, reg) = fresh();
    let reg = Arc::new(reg);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let reg = reg.clone();
            thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        reg.create(NewKey::named(format!("k{t}-{i}")), NOW)
                            .unwrap()
                            .0
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let secrets: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(reg.len(), 80);
    assert_eq!(KeyRegistry::load(reg.path()).unwrap().len(), 80);
    for s in &secrets {
        assert!(reg.authenticate(Some(s), NOW).is_ok());
    }
}

#[test]
fn file_is_always_parseable_and_leftover_temp_files_are_ignored() {
    let (dir, reg) = fresh();
    let reg = Arc::new(reg);
    reg.create(NewKey::named("seed"), NOW).unwrap();
    // What a crash between "write temp" and "rename" leaves behind: a half-written temp file.
    let leftover = dir.path().join(".keys.toml.tmp.999.00000000deadbeef");
    fs::write(&leftover, "[[keys]]\nname = \"half").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), reg.path().to_path_buf());
        thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Every read sees a complete, valid file: old or new, never partial.
                let text = fs::read_to_string(&path).unwrap();
                let keys = file::parse(&text, &path).unwrap();
                assert!(!keys.is_empty());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        let patch = KeyPatch {
            limits: Some(LimitsPatch {
                requests_per_minute: Some(Some(i + 1)),
                ..LimitsPatch::default()
            }),
            ..KeyPatch::default()
        };
        reg.update("seed", &patch, NOW).unwrap();
        if i % 10 == 0 {
            reg.create(NewKey::named(format!("n{i}")), NOW).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);

    let loaded = KeyRegistry::load(reg.path()).unwrap();
    assert_eq!(loaded.len(), 11);
    assert_eq!(
        loaded.get("seed").unwrap().limits,
        KeyLimits {
            requests_per_minute: Some(100),
            ..KeyLimits::default()
        }
    );
    // Only the keys file and the simulated leftover: no temp file of ours remains.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".keys.toml.tmp.999.00000000deadbeef", "keys.toml"]);
}
