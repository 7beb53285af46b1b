//! The overlay file as the admin API edits it: read, change one thing, render. Cluster and
//! model tables are kept as plain TOML tables here; whether they are valid is decided by
//! merging the rendered text and validating it like any load (`config::load_with_overlay`).

use serde::{Deserialize, Serialize};

use super::overlay::same_replica;

const HEADER: &str = "# Runtime changes made over the tokengate admin API (replicas, clusters, \
model aliases),\n# merged over the config file at every start and reload. Written atomically \
by tokengate;\n# edit with care (`tokengate check` validates the merged result).\n\n";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed_clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<ReplicaEdit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    clusters: Vec<toml::Table>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    models: Vec<toml::Table>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaEdit {
    cluster: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
}

/// Where a name is defined before this edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined {
    /// In the config file (an overlay entry may shadow it).
    pub in_file: bool,
}

impl OverlayDoc {
    /// Parse an overlay file's text (an empty or missing file is an empty overlay).
    pub fn parse(text: &str) -> Result<OverlayDoc, String> {
        toml::from_str(text).map_err(|e| e.message().trim().to_string())
    }

    pub fn render(&self) -> String {
        // Plain data, string keys: serialization cannot fail; fall back to an empty body.
        format!("{HEADER}{}", toml::to_string(self).unwrap_or_default())
    }

    fn named<'a>(
        tables: &'a mut [toml::Table],
        key: &str,
        name: &str,
    ) -> Option<&'a mut toml::Table> {
        tables
            .iter_mut()
            .find(|t| t.get(key).and_then(|v| v.as_str()) == Some(name))
    }

    /// Add `addr` to `cluster`: to its overlay definition if it has one, else as a change to
    /// the config file's cluster.
    pub fn add_replica(&mut self, cluster: &str, addr: &str) {
        if let Some(table) = Self::named(&mut self.clusters, "name", cluster) {
            let list = table
                .entry("replicas")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.push(toml::Value::String(addr.to_string()));
            }
            return;
        }
        let edit = self.replica_edit(cluster);
        edit.remove.retain(|r| !same_replica(r, addr));
        if !edit.add.iter().any(|r| same_replica(r, addr)) {
            edit.add.push(addr.to_string());
        }
    }

    /// Remove `addr` from `cluster` (its overlay definition, or the config file's cluster).
    pub fn remove_replica(&mut self, cluster: &str, addr: &str) {
        if let Some(table) = Self::named(&mut self.clusters, "name", cluster) {
            if let Some(list) = table.get_mut("replicas").and_then(|v| v.as_array_mut()) {
                list.retain(|r| !r.as_str().is_some_and(|r| same_replica(r, addr)));
            }
            return;
        }
        let edit = self.replica_edit(cluster);
        let before = edit.add.len();
        edit.add.retain(|r| !same_replica(r, addr));
        if edit.add.len() == before && !edit.remove.iter().any(|r| same_replica(r, addr)) {
            edit.remove.push(addr.to_string());
        }
        self.replicas
            .retain(|e| !(e.add.is_empty() && e.remove.is_empty()));
    }

    fn replica_edit(&mut self, cluster: &str) -> &mut ReplicaEdit {
        let at = match self.replicas.iter().position(|e| e.cluster == cluster) {
            Some(at) => at,
            None => {
                self.replicas.push(ReplicaEdit {
                    cluster: cluster.to_string(),
                    ..ReplicaEdit::default()
                });
                self.replicas.len() - 1
            }
        };
        &mut self.replicas[at]
    }

    /// Define (or redefine) cluster `name` as `table` (its `name` is set to `name`). Earlier
    /// replica changes to it are dropped: the new definition is complete.
    pub fn put_cluster(&mut self, name: &str, mut table: toml::Table) {
        table.insert("name".into(), toml::Value::String(name.to_string()));
        self.removed_clusters.retain(|n| n != name);
        self.replicas.retain(|e| e.cluster != name);
        match Self::named(&mut self.clusters, "name", name) {
            Some(slot) => *slot = table,
            None => self.clusters.push(table),
        }
    }

    pub fn remove_cluster(&mut self, name: &str, defined: Defined) {
        self.clusters
            .retain(|t| t.get("name").and_then(|v| v.as_str()) != Some(name));
        self.replicas.retain(|e| e.cluster != name);
        if defined.in_file && !self.removed_clusters.iter().any(|n| n == name) {
            self.removed_clusters.push(name.to_string());
        }
    }

    /// Define (or redefine) alias `alias` as `table` (its `alias` is set to `alias`).
    pub fn put_model(&mut self, alias: &str, mut table: toml::Table) {
        table.insert("alias".into(), toml::Value::String(alias.to_string()));
        self.removed_models.retain(|n| n != alias);
        match Self::named(&mut self.models, "alias", alias) {
            Some(slot) => *slot = table,
            None => self.models.push(table),
        }
    }

    pub fn remove_model(&mut self, alias: &str, defined: Defined) {
        self.models
            .retain(|t| t.get("alias").and_then(|v| v.as_str()) != Some(alias));
        if defined.in_file && !self.removed_models.iter().any(|n| n == alias) {
            self.removed_models.push(alias.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn replica_changes_to_a_file_cluster_round_trip_and_cancel_out() {
        let mut doc = OverlayDoc::default();
        doc.add_replica("pool", "10.0.0.7:8000");
        doc.add_replica("pool", "10.0.0.7:8000");
        doc.remove_replica("pool", "10.0.0.1:8000");
        let text = doc.render();
        assert!(text.starts_with("# Runtime changes"), "{text}");
        let back = OverlayDoc::parse(&text).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.replicas[0].add, ["10.0.0.7:8000"]);
        assert_eq!(back.replicas[0].remove, ["10.0.0.1:8000"]);
        // Removing an added one forgets it; adding a removed one forgets the removal.
        doc.remove_replica("pool", "10.0.0.7:8000");
        doc.add_replica("pool", "10.0.0.1:8000");
        assert_eq!(doc.replicas[0].add, ["10.0.0.1:8000"]);
        assert!(doc.replicas[0].remove.is_empty());
        doc.remove_replica("pool", "10.0.0.1:8000");
        assert_eq!(doc, OverlayDoc::default(), "back to no change at all");
    }

    #[test]
    fn overlay_clusters_are_edited_in_place() {
        let mut doc = OverlayDoc::default();
        doc.add_replica("new", "10.0.0.1:1");
        doc.put_cluster(
            "new",
            table("flavour = \"vllm\"\nreplicas = [\"10.0.0.2:1\"]"),
        );
        assert!(
            doc.replicas.is_empty(),
            "the full definition replaces earlier changes"
        );
        doc.add_replica("new", "10.0.0.3:1");
        doc.remove_replica("new", "10.0.0.2:1");
        let replicas = doc.clusters[0]["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].as_str(), Some("10.0.0.3:1"));
        assert_eq!(doc.clusters[0]["name"].as_str(), Some("new"));
        doc.remove_cluster("new", Defined { in_file: false });
        assert_eq!(doc, OverlayDoc::default());
    }

    #[test]
    fn removing_what_the_file_defines_is_recorded_and_undone_by_a_put() {
        let mut doc = OverlayDoc::default();
        doc.remove_model("m", Defined { in_file: true });
        doc.remove_model("m", Defined { in_file: true });
        assert_eq!(doc.removed_models, ["m"]);
        doc.put_model("m", table("cluster = \"pool\""));
        assert!(doc.removed_models.is_empty());
        assert_eq!(doc.models[0]["alias"].as_str(), Some("m"));
        doc.remove_cluster("pool", Defined { in_file: true });
        assert_eq!(doc.removed_clusters, ["pool"]);
        doc.put_cluster("pool", table("flavour = \"vllm\"\nreplicas = []"));
        assert!(doc.removed_clusters.is_empty());
        let back = OverlayDoc::parse(&doc.render()).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn unknown_fields_in_the_overlay_are_refused() {
        assert!(OverlayDoc::parse("surprise = 1").is_err());
        assert_eq!(OverlayDoc::parse("").unwrap(), OverlayDoc::default());
    }
}
