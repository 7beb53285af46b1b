//! The runtime overlay: clusters, replicas and model aliases changed over the admin API (an
//! autoscaler adding the vLLM replica it just started), kept in their own file next to the
//! config (`server.overlay_file`, default `<config stem>.overlay.toml`) and merged over the
//! config file at every load (start, reload, `check`), so they survive restarts and reloads.
//!
//! The merge works on the file model, before validation: the merged document is validated
//! exactly like a config file. Values from the overlay keep their spans, shifted past the
//! config text (see `config::parse_merged`), so a problem in them is reported with the overlay's
//! own path, line and column. The editable form the admin API writes is `overlay_edit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::file::{ClusterSection, ConfigFile, ModelSection};
use super::validate::Validator;

/// The overlay file as read for a load. Applied in this order: removals, whole clusters and
/// models (replacing the config file's of the same name, else appended), replica changes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayFile {
    /// Clusters of the config file that the overlay removes.
    #[serde(default)]
    pub removed_clusters: Vec<Spanned<String>>,
    /// Aliases of the config file that the overlay removes.
    #[serde(default)]
    pub removed_models: Vec<Spanned<String>>,
    /// Replicas added to / removed from a cluster of the config file.
    #[serde(default)]
    pub replicas: Vec<ReplicaPatch>,
    #[serde(default)]
    pub clusters: Vec<ClusterSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaPatch {
    pub cluster: Spanned<String>,
    #[serde(default)]
    pub add: Vec<Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// Where one cluster or alias of the merged config is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    File,
    Overlay,
    /// Defined in the config file, replicas added or removed by the overlay.
    FileWithOverlayReplicas,
}

/// Where each part of a load came from (`GET /admin/config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origins {
    /// The overlay file of this config (it may not exist).
    pub overlay_file: PathBuf,
    pub overlay_present: bool,
    pub clusters: BTreeMap<String, Origin>,
    pub models: BTreeMap<String, Origin>,
    /// Names the config file defines (before the overlay): deleting one over the admin API
    /// records a removal, deleting an overlay-only one just drops it.
    pub file_clusters: Vec<String>,
    pub file_models: Vec<String>,
    /// The config file's clusters and aliases that the overlay removes.
    pub removed_clusters: Vec<String>,
    pub removed_models: Vec<String>,
}

/// `server.overlay_file` relative to the config's directory; by default
/// `<config stem>.overlay.toml` beside the config (`tokengate.toml` → `tokengate.overlay.toml`).
pub fn overlay_path(configured: Option<&Spanned<String>>, config_path: &Path) -> PathBuf {
    let dir = config_path.parent().unwrap_or(Path::new(""));
    match configured {
        Some(p) if Path::new(p.get_ref()).is_absolute() => PathBuf::from(p.get_ref()),
        Some(p) => dir.join(p.get_ref()),
        None => {
            let stem = config_path
                .file_stem()
                .map_or_else(|| "tokengate".into(), |s| s.to_string_lossy());
            dir.join(format!("{stem}.overlay.toml"))
        }
    }
}

/// Replica addresses are compared as socket addresses when both parse (`127.0.0.1:80` is
/// `127.0.0.1:080`), else as text; bad ones are reported by validation.
pub fn same_replica(a: &str, b: &str) -> bool {
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Validator<'_> {
    /// Apply `overlay` to the config file's model; returns where every part came from.
    pub(super) fn merge_overlay(
        &mut self,
        raw: &mut ConfigFile,
        overlay: OverlayFile,
        mut origins: Origins,
    ) -> Origins {
        for c in &raw.clusters {
            origins.file_clusters.push(c.name.get_ref().clone());
            origins
                .clusters
                .insert(c.name.get_ref().clone(), Origin::File);
        }
        for m in &raw.models {
            origins.file_models.push(m.alias.get_ref().clone());
            origins
                .models
                .insert(m.alias.get_ref().clone(), Origin::File);
        }
        for name in overlay.removed_clusters {
            let name = name.into_inner();
            let before = raw.clusters.len();
            raw.clusters.retain(|c| *c.name.get_ref() != name);
            if raw.clusters.len() < before {
                origins.clusters.remove(&name);
                origins.removed_clusters.push(name);
            }
        }
        for alias in overlay.removed_models {
            let alias = alias.into_inner();
            let before = raw.models.len();
            raw.models.retain(|m| *m.alias.get_ref() != alias);
            if raw.models.len() < before {
                origins.models.remove(&alias);
                origins.removed_models.push(alias);
            }
        }
        for c in overlay.clusters {
            origins
                .clusters
                .insert(c.name.get_ref().clone(), Origin::Overlay);
            match raw
                .clusters
                .iter_mut()
                .find(|x| x.name.get_ref() == c.name.get_ref())
            {
                Some(slot) => *slot = c,
                None => raw.clusters.push(c),
            }
        }
        for m in overlay.models {
            origins
                .models
                .insert(m.alias.get_ref().clone(), Origin::Overlay);
            match raw
                .models
                .iter_mut()
                .find(|x| x.alias.get_ref() == m.alias.get_ref())
            {
                Some(slot) => *slot = m,
                None => raw.models.push(m),
            }
        }
        for (i, patch) in overlay.replicas.into_iter().enumerate() {
            self.patch_replicas(raw, patch, i, &mut origins);
        }
        origins
    }

    fn patch_replicas(
        &mut self,
        raw: &mut ConfigFile,
        patch: ReplicaPatch,
        i: usize,
        origins: &mut Origins,
    ) {
        let name = patch.cluster.get_ref();
        let Some(cluster) = raw.clusters.iter_mut().find(|c| c.name.get_ref() == name) else {
            self.fail(
                &patch.cluster,
                format!("replicas[{i}].cluster"),
                format!("replicas are added to cluster `{name}`, which neither the config file nor the overlay defines"),
            );
            return;
        };
        let list = cluster.replicas.get_mut();
        list.retain(|r| {
            !patch
                .remove
                .iter()
                .any(|x| same_replica(x.get_ref(), r.get_ref()))
        });
        for added in patch.add {
            if !list
                .iter()
                .any(|r| same_replica(r.get_ref(), added.get_ref()))
            {
                list.push(added);
            }
        }
        if let Some(origin) = origins.clusters.get_mut(name) {
            if *origin == Origin::File {
                *origin = Origin::FileWithOverlayReplicas;
            }
        }
    }
}
