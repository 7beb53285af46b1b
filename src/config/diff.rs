//! What changed between two configurations: the summary a reload reports.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Config;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct NameChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl NameChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ConfigDiff {
    pub clusters: NameChanges,
    /// Replicas as `cluster/ip:port`.
    pub replicas: NameChanges,
    pub models: NameChanges,
    /// `[rate_limit_classes]` by name.
    pub rate_limit_classes: NameChanges,
    pub server_changed: bool,
    /// Settings a reload cannot apply (listeners are bound once at start): they take effect
    /// only after a zero-downtime upgrade or a restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_upgrade: Vec<String>,
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let cluster_names =
        |c: &Config| -> BTreeSet<String> { c.clusters.iter().map(|c| c.name.clone()).collect() };
    let replica_ids = |c: &Config| -> BTreeSet<String> {
        c.clusters
            .iter()
            .flat_map(|cl| {
                cl.replicas
                    .iter()
                    .map(move |r| format!("{}/{}", cl.name, r.addr))
            })
            .collect()
    };
    let mut out = ConfigDiff::default();
    let (old_c, new_c) = (cluster_names(old), cluster_names(new));
    out.clusters.added = new_c.difference(&old_c).cloned().collect();
    out.clusters.removed = old_c.difference(&new_c).cloned().collect();
    out.clusters.changed = old_c
        .intersection(&new_c)
        .filter(|name| {
            let (a, b) = (old.cluster(name), new.cluster(name));
            // Any setting (policy, queue, serves, health, timeouts, …), not only the replicas.
            match (a, b) {
                (Some(a), Some(b)) => format!("{a:?}") != format!("{b:?}"),
                _ => false,
            }
        })
        .cloned()
        .collect();
    let (old_r, new_r) = (replica_ids(old), replica_ids(new));
    out.replicas.added = new_r.difference(&old_r).cloned().collect();
    out.replicas.removed = old_r.difference(&new_r).cloned().collect();

    let old_m: BTreeSet<&String> = old.routes.keys().collect();
    let new_m: BTreeSet<&String> = new.routes.keys().collect();
    out.models.added = new_m.difference(&old_m).map(|s| s.to_string()).collect();
    out.models.removed = old_m.difference(&new_m).map(|s| s.to_string()).collect();
    out.models.changed = old_m
        .intersection(&new_m)
        .filter(|alias| {
            let (a, b) = (&old.routes[**alias], &new.routes[**alias]);
            a.cluster.name != b.cluster.name
                || a.served_name != b.served_name
                || a.expose_served_name != b.expose_served_name
                || a.owned_by != b.owned_by
                || format!("{:?}", a.limits) != format!("{:?}", b.limits)
        })
        .map(|s| s.to_string())
        .collect();
    out.rate_limit_classes = class_changes(old, new);
    out.server_changed = format!("{:?}", old.server) != format!("{:?}", new.server);
    out.needs_upgrade = listener_changes(old, new);
    out
}

fn class_changes(old: &Config, new: &Config) -> NameChanges {
    let (a, b) = (&old.rate_limit_classes, &new.rate_limit_classes);
    let names = |m: &std::collections::HashMap<String, super::model::RateLimitClass>| {
        m.keys().cloned().collect::<BTreeSet<String>>()
    };
    let (old_n, new_n) = (names(a), names(b));
    NameChanges {
        added: new_n.difference(&old_n).cloned().collect(),
        removed: old_n.difference(&new_n).cloned().collect(),
        changed: old_n
            .intersection(&new_n)
            .filter(|n| a[*n] != b[*n])
            .cloned()
            .collect(),
    }
}

fn listener_changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.server, &new.server);
    let mut changed = Vec::new();
    if a.listen != b.listen {
        changed.push("server.listen".to_string());
    }
    if a.tls_listen != b.tls_listen {
        changed.push("server.tls_listen".to_string());
    }
    if a.admin_listen != b.admin_listen {
        changed.push("server.admin_listen".to_string());
    }
    if a.h2c != b.h2c {
        changed.push("server.h2c".to_string());
    }
    if a.client_read_buffer_bytes != b.client_read_buffer_bytes {
        changed.push("server.client_read_buffer_bytes".to_string());
    }
    if a.threads != b.threads {
        changed.push("server.threads".to_string());
    }
    if a.work_stealing != b.work_stealing {
        changed.push("server.work_stealing".to_string());
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[server]\nlisten=[\"127.0.0.1:1\"]\n[[clusters]]\nname=\"a\"\nflavour=\"vllm\"\n\
             replicas=[\"127.0.0.1:2\"]\n[[clusters]]\nname=\"b\"\nflavour=\"vllm\"\n\
             replicas=[\"127.0.0.1:3\"]\n{extra}"
        );
        super::super::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn reports_moved_alias_and_new_model() {
        let old = cfg("[[models]]\nalias=\"m\"\ncluster=\"a\"\n");
        let new =
            cfg("[[models]]\nalias=\"m\"\ncluster=\"b\"\n[[models]]\nalias=\"n\"\ncluster=\"a\"\n");
        let d = diff(&old, &new);
        assert_eq!(d.models.changed, vec!["m"]);
        assert_eq!(d.models.added, vec!["n"]);
        assert!(d.clusters.is_empty());
        assert!(d.replicas.is_empty());
        assert!(!d.server_changed);
    }

    #[test]
    fn reports_cluster_settings_and_classes() {
        let old = cfg("[rate_limit_classes.batch]
requests_per_minute = 5
");
        let new = cfg("[rate_limit_classes.batch]
requests_per_minute = 6
             [rate_limit_classes.bulk]
requests_per_minute = 1
");
        let d = diff(&old, &new);
        assert_eq!(d.rate_limit_classes.changed, vec!["batch"]);
        assert_eq!(d.rate_limit_classes.added, vec!["bulk"]);
        assert!(d.clusters.is_empty(), "{d:?}");
        assert!(diff(&old, &old).clusters.is_empty());
        let text = |policy: &str| {
            format!(
                "[server]\nlisten=[\"127.0.0.1:1\"]\n[[clusters]]\nname=\"a\"\nflavour=\"vllm\"\n\
                 replicas=[\"127.0.0.1:2\"]\npolicy=\"{policy}\"\n"
            )
        };
        let parse = |t: String| super::super::parse(&t, Path::new("t.toml")).unwrap();
        let d = diff(&parse(text("round-robin")), &parse(text("scored")));
        assert_eq!(d.clusters.changed, vec!["a"]);
        assert!(d.replicas.is_empty());
    }

    #[test]
    fn worker_settings_need_an_upgrade() {
        let old = super::super::parse("[server]\nlisten=[\"127.0.0.1:1\"]\n", Path::new("t.toml"))
            .unwrap();
        let new = super::super::parse(
            "[server]\nlisten=[\"127.0.0.1:1\"]\nwork_stealing=false\nthreads=3\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(old.server.work_stealing && !new.server.work_stealing);
        let d = diff(&old, &new);
        assert_eq!(
            d.needs_upgrade,
            vec!["server.threads", "server.work_stealing"]
        );
    }
}
