//! Loading a repository folder with tough, the way a box does, to check what it would accept.
//!
//! This module owns [`load_with_tough`]: it points tough 0.24 at `file://` URLs of a repository
//! folder, starting from a given trusted root, and returns what tough verified — role versions,
//! key ids and every target with its custom fields and bytes. Tests use it to check repositories
//! written by this module or by python-tuf without depending on tough themselves.

use std::collections::BTreeMap;
use std::path::Path;

use tough::{IntoVec, RepositoryLoader};
use url::Url;

use super::metadata::{RepoLayout, TargetCustom};
use super::{PublishError, ROLES};

/// What tough accepted from a repository.
#[derive(Debug, Clone)]
pub struct LoadedRepo {
    /// Root version tough ended on (after walking `N.root.json`).
    pub root_version: u64,
    /// Targets version.
    pub targets_version: u64,
    /// Snapshot version.
    pub snapshot_version: u64,
    /// Timestamp version.
    pub timestamp_version: u64,
    /// Key ids of each top-level role in the final root (sorted), as tough computed and checked
    /// them; keyed by role name.
    pub role_key_ids: BTreeMap<String, Vec<String>>,
    /// Every target, sorted by name.
    pub targets: Vec<LoadedTarget>,
}

impl LoadedRepo {
    /// The target of that name.
    pub fn target(&self, name: &str) -> Option<&LoadedTarget> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// One target as tough verified it.
#[derive(Debug, Clone)]
pub struct LoadedTarget {
    /// Target name.
    pub name: String,
    /// Signed length.
    pub length: u64,
    /// Signed sha256, lowercase hex.
    pub sha256: String,
    /// The `custom` map as signed.
    pub custom: BTreeMap<String, serde_json::Value>,
    /// The target's bytes, read through tough (length and hash checked).
    pub bytes: Vec<u8>,
}

impl LoadedTarget {
    /// The custom fields parsed as [`TargetCustom`].
    pub fn parsed_custom(&self) -> Result<TargetCustom, PublishError> {
        let custom = self
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        TargetCustom::from_custom(&self.name, &custom)
    }
}

fn tough_error(what: impl Into<String>) -> impl FnOnce(tough::error::Error) -> PublishError {
    let what = what.into();
    move |source| PublishError::Tough {
        what,
        source: Box::new(source),
    }
}

fn dir_url(path: &Path) -> Result<Url, PublishError> {
    let absolute = path.canonicalize().map_err(|source| PublishError::Io {
        path: path.to_owned(),
        source,
    })?;
    Url::from_directory_path(&absolute).map_err(|()| PublishError::BadRepo {
        path: absolute.clone(),
        reason: "cannot be turned into a file:// URL".into(),
    })
}

/// Loads the repository in folder `repo` with tough (`file://` transport, a fresh temporary
/// datastore, expiry enforced), trusting `trusted_root` (the bytes of some `N.root.json`), and
/// reads every target through tough.
pub async fn load_with_tough(trusted_root: &[u8], repo: &Path) -> Result<LoadedRepo, PublishError> {
    let layout = RepoLayout::new(repo);
    let metadata_url = dir_url(&layout.metadata_dir())?;
    let targets_url = dir_url(&layout.targets_dir())?;
    let loaded = RepositoryLoader::new(&trusted_root, metadata_url, targets_url)
        .load()
        .await
        .map_err(tough_error(format!("loading {}", repo.display())))?;

    let root = &loaded.root().signed;
    let mut role_key_ids = BTreeMap::new();
    for role in ROLES {
        let mut ids: Vec<String> = root
            .roles
            .get(&role)
            .map(|r| r.keyids.iter().map(hex::encode).collect())
            .unwrap_or_default();
        ids.sort();
        role_key_ids.insert(role.to_string(), ids);
    }

    let mut listed: Vec<_> = loaded
        .all_targets()
        .map(|(name, target)| (name.clone(), target.clone()))
        .collect();
    listed.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    let mut targets = Vec::with_capacity(listed.len());
    for (name, target) in listed {
        let what = format!("reading target {}", name.raw());
        let stream = loaded
            .read_target(&name)
            .await
            .map_err(tough_error(what.clone()))?
            .ok_or_else(|| PublishError::BadRepo {
                path: repo.to_owned(),
                reason: format!("tough lists target {} but cannot find it", name.raw()),
            })?;
        let bytes = stream.into_vec().await.map_err(tough_error(what))?;
        targets.push(LoadedTarget {
            name: name.raw().to_owned(),
            length: target.length,
            sha256: hex::encode(&target.hashes.sha256),
            custom: target.custom.into_iter().collect(),
            bytes,
        });
    }
    Ok(LoadedRepo {
        root_version: root.version.get(),
        targets_version: loaded.targets().signed.version.get(),
        snapshot_version: loaded.snapshot().signed.version.get(),
        timestamp_version: loaded.timestamp().signed.version.get(),
        role_key_ids,
        targets,
    })
}
