//! Unit tests of the overlay merge: what it changes, where it says things came from, and
//! where its problems are reported (the overlay's own path and lines).

use std::path::Path;

use super::overlay::Origin;
use super::*;

const FILE: &str = r#"[server]
listen = ["127.0.0.1:8080"]

[[clusters]]
name = "a"
flavour = "vllm"
replicas = ["127.0.0.1:8101", "127.0.0.1:8102"]

[[clusters]]
name = "old"
flavour = "vllm"
replicas = ["127.0.0.1:8201"]

[[models]]
alias = "m"
cluster = "a"

[[models]]
alias = "gone"
cluster = "old"
"#;

fn merged(overlay: &str) -> Result<Config, ConfigError> {
    parse_merged(FILE, Path::new("/etc/tg/tokengate.toml"), Some(overlay))
}

#[test]
fn the_overlay_adds_removes_and_replaces_and_says_so() {
    let c = merged(
        r#"removed_clusters = ["old"]
removed_models = ["gone", "never-was"]

[[replicas]]
cluster = "a"
add = ["127.0.0.1:8103", "127.0.0.1:8101"]
remove = ["127.0.0.1:08102"]

[[clusters]]
name = "b"
flavour = "trtllm"
replicas = ["127.0.0.1:8301"]

[[models]]
alias = "m"
cluster = "b"

[[models]]
alias = "n"
cluster = "a"
"#,
    )
    .unwrap();
    let a = c.cluster("a").unwrap();
    let addrs: Vec<String> = a.replicas.iter().map(|r| r.addr.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:8101", "127.0.0.1:8103"]);
    assert!(c.cluster("old").is_none());
    assert_eq!(
        c.route("m").unwrap().cluster.name,
        "b",
        "replaced by the overlay"
    );
    assert_eq!(c.route("n").unwrap().cluster.name, "a");
    assert!(c.route("gone").is_none());
    let o = &c.origins;
    assert_eq!(o.overlay_file, Path::new("/etc/tg/tokengate.overlay.toml"));
    assert!(o.overlay_present);
    assert_eq!(o.clusters["a"], Origin::FileWithOverlayReplicas);
    assert_eq!(o.clusters["b"], Origin::Overlay);
    assert_eq!(o.models["m"], Origin::Overlay);
    assert_eq!(o.removed_clusters, ["old"]);
    assert_eq!(o.removed_models, ["gone"], "stale removals are ignored");
    assert_eq!(o.file_clusters, ["a", "old"]);
}

#[test]
fn without_an_overlay_everything_is_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, FILE).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.origins.overlay_file, dir.path().join("gw.overlay.toml"));
    assert!(!c.origins.overlay_present);
    assert!(c.origins.clusters.values().all(|o| *o == Origin::File));
    // The overlay file is read at load.
    std::fs::write(
        dir.path().join("gw.overlay.toml"),
        "removed_models = [\"gone\"]\n",
    )
    .unwrap();
    assert!(load(&path).unwrap().route("gone").is_none());
    // `server.overlay_file` moves it.
    let moved = FILE.replace("[server]\n", "[server]\noverlay_file = \"state/rt.toml\"\n");
    std::fs::write(&path, moved).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.origins.overlay_file, dir.path().join("state/rt.toml"));
    assert!(c.route("gone").is_some());
}

#[test]
fn problems_in_overlay_values_name_the_overlay_file_and_line() {
    let e = merged("\n[[replicas]]\ncluster = \"a\"\nadd = [\"not-an-address\"]\n").unwrap_err();
    let issue = &e.issues[0];
    assert_eq!(issue.file, Path::new("/etc/tg/tokengate.overlay.toml"));
    assert_eq!(issue.line, Some(4));
    assert_eq!(issue.field, "clusters[0].replicas[2]");
    assert!(issue.message.contains("not-an-address"), "{e}");
    // A model on an unknown cluster: the overlay's line; the file's problems keep theirs.
    let e = parse_merged(
        &FILE.replace(
            "flavour = \"vllm\"\nreplicas = [\"127.0.0.1:8201\"]",
            "flavour = \"nope\"\nreplicas = [\"127.0.0.1:8201\"]",
        ),
        Path::new("/etc/tg/tokengate.toml"),
        Some("[[models]]\nalias = \"x\"\ncluster = \"missing\"\n"),
    )
    .unwrap_err();
    let lines: Vec<_> = e
        .issues
        .iter()
        .map(|i| (i.file.display().to_string(), i.line))
        .collect();
    assert!(
        lines.contains(&("/etc/tg/tokengate.toml".into(), Some(11))),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("/etc/tg/tokengate.overlay.toml".into(), Some(3))),
        "{lines:?}"
    );
}

#[test]
fn overlay_syntax_and_shape_errors_name_the_overlay() {
    for (text, line) in [("\n\nclusters = [", 3), ("\nsurprise = 1\n", 2)] {
        let e = merged(text).unwrap_err();
        assert_eq!(
            e.issues[0].file,
            Path::new("/etc/tg/tokengate.overlay.toml")
        );
        assert_eq!(e.issues[0].line, Some(line), "{e}");
    }
    let e = merged("[[replicas]]\ncluster = \"nope\"\nadd = [\"127.0.0.1:1\"]\n").unwrap_err();
    assert_eq!(e.issues[0].field, "replicas[0].cluster");
    assert_eq!(e.issues[0].line, Some(2));
}

#[test]
fn an_overlay_alias_may_keep_its_served_name() {
    let c = merged(
        "[[models]]\nalias = \"n\"\ncluster = \"a\"\nserved_name = \"org/n\"\n\
         expose_served_name = true\n",
    )
    .unwrap();
    let n = c.route("n").unwrap();
    assert!(n.expose_served_name);
    assert_eq!(n.served_name, "org/n");
    assert!(!c.route("m").unwrap().expose_served_name);
}
