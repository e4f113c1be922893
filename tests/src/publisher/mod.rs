//! The TUF publishers the update tests sign repositories with, behind one [`Publisher`] trait.
//!
//! This module owns what an update scenario needs from whoever signs the repository: create
//! it, publish a bundle, re-sign the timestamp, rotate a key, copy it for an attacker, and the
//! tamper hooks that write what an attacker or a mistaken operator could (an expired timestamp,
//! a root signed below its threshold). Two implementations: [`OwnRepo`], our own publisher,
//! and [`PyRepo`], python-tuf (`tests/python/tuf_publisher.py`), an independent TUF
//! implementation. The attack scenarios in `tests/tests/e2e/updater_attacks.rs` are written
//! once against the trait and run for both.

mod ours;
mod python;

use std::path::{Path, PathBuf};

pub use ours::OwnRepo;
pub use python::PyRepo;

use crate::repo_server::RepoServer;
use crate::updater_box::copy_dir;

/// A top-level TUF role whose key a publisher can rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The root role (one of its keys is replaced).
    Root,
    /// The targets role.
    Targets,
    /// The snapshot role.
    Snapshot,
    /// The timestamp role.
    Timestamp,
}

impl Role {
    /// The role's name as both publishers' command lines spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }
}

/// Which boxes a published target is for (empty: every line, every station).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// Lines allowed to install it.
    pub lines: &'a [&'a str],
    /// Stations allowed to install it.
    pub stations: &'a [&'a str],
}

/// A signed TUF repository with its keys, built by one publisher implementation.
///
/// The repository is `metadata/` (`N.root.json`, `timestamp.json`, `N.snapshot.json`,
/// `N.targets.json`) and `targets/<sha256>.<name>` below [`Publisher::repo`]: the same layout
/// for every implementation, so scenarios may tamper with files by name.
pub trait Publisher: Sized {
    /// A short name for assertion messages.
    const NAME: &'static str;

    /// A new repository: a 2-of-3 root, one key for each other role, empty targets version 1,
    /// every role at version 1.
    fn init() -> Self;

    /// The repository folder: what the server serves.
    fn repo(&self) -> &Path;

    /// Publishes bundle bytes as `<model>-<model_version>.dmb` (model and version from the
    /// bundle's manifest) for the boxes in `scope`: targets, snapshot and timestamp N+1.
    /// Returns the bundle's SHA-256.
    fn publish_scoped(&self, bytes: &[u8], scope: Scope<'_>) -> String;

    /// Writes timestamp N+1 for the current snapshot, valid for a day.
    fn resign_timestamp(&self);

    /// Tamper hook: writes timestamp N+1 for the current snapshot, validly signed but already
    /// expired.
    fn resign_timestamp_expired(&self);

    /// Replaces a key of `role` with a new one in root N+1 (signed by a threshold of the old
    /// and the new root keys) and re-signs what depends on it.
    fn rotate_key(&self, role: Role);

    /// A copy of the repository and of every key as they are now, published to independently
    /// from then on (an attacker who stole the keys).
    fn steal(&self) -> Self;

    /// Tamper hook: root N+1 signed by one root key only (below the threshold of 2) hands the
    /// targets role to a key the attacker holds, and `bytes` are published signed with that
    /// key. Returns the bundle's SHA-256.
    fn publish_under_root_below_threshold(&self, bytes: &[u8]) -> String;

    /// Publishes bundle bytes for every box; returns the bundle's SHA-256.
    fn publish(&self, bytes: &[u8]) -> String {
        self.publish_scoped(bytes, Scope::default())
    }

    /// The root a box ships with (version 1).
    fn first_root(&self) -> PathBuf {
        self.repo().join("metadata/1.root.json")
    }

    /// The stored target file of the bundle with digest `sha`.
    fn target_file(&self, sha: &str) -> PathBuf {
        let dir = self.repo().join("targets");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{sha}.")))
            })
            .unwrap_or_else(|| panic!("{}: no target file for {sha}", Self::NAME))
    }

    /// Copies the repository folder (metadata and targets) to `to`, e.g. to keep an old state
    /// for a replay.
    fn snapshot_to(&self, to: &Path) {
        copy_dir(self.repo(), to);
    }

    /// Serves the repository folder itself (later publications are served at once).
    fn serve(&self) -> RepoServer {
        RepoServer::start(self.repo())
    }
}

/// Bundle facts a publisher that does not read bundles itself needs: model name,
/// `model_version`, version text.
pub(crate) fn manifest_facts(bytes: &[u8]) -> (String, u64, String) {
    let bundle = defect_models::Bundle::from_bytes(bytes.to_vec())
        .unwrap_or_else(|e| panic!("not a bundle: {e}"));
    let manifest = bundle.manifest();
    (
        manifest.name.clone(),
        manifest.model_version,
        manifest.version.clone(),
    )
}
