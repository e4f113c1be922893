//! The box's own record of what it has trusted: the root history and the anti-rollback floor.
//!
//! This module owns the trust state in `<state_dir>/trust/`, kept by the updater itself rather
//! than by the TUF library's datastore (whose writes are neither atomic nor fsynced, and which
//! starts from whatever root it is given):
//!
//! ```text
//! trust/roots/<N>.root.json   every root version this box has verified, newest used first
//! trust/floor.json            highest versions seen of each role, highest model_version per
//!                             model, and the latest clock reading of a successful check
//! ```
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync of the folder), so
//! after a power cut each holds its old or its new content. A floor that cannot be read is
//! reported loudly and rebuilt from the evidence on disk (root history, bundles in the model
//! store), never silently reset to zero.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use defect_shared::error_chain::Chain;
use serde::{Deserialize, Serialize};

use crate::json_file::JsonFileError;

/// Highest versions this box has accepted; nothing lower is accepted again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// Format version of this record.
    pub v: u32,
    /// Highest root version trusted.
    pub root: u64,
    /// Highest timestamp version accepted.
    pub timestamp: u64,
    /// Highest snapshot version accepted.
    pub snapshot: u64,
    /// Highest targets version accepted.
    pub targets: u64,
    /// Highest `model_version` installed, per model name.
    pub model_versions: BTreeMap<String, u64>,
    /// Latest wall-clock reading (Unix ms) of a successful check, to detect a clock that stepped
    /// back.
    pub latest_clock_ms: u64,
}

impl Floor {
    /// The model floor for `model` (0 when none was ever installed).
    pub fn model_version(&self, model: &str) -> u64 {
        self.model_versions.get(model).copied().unwrap_or(0)
    }

    /// Raises the model floor of `model` to `version` (never lowers it).
    pub fn raise_model_version(&mut self, model: &str, version: u64) {
        let entry = self.model_versions.entry(model.to_owned()).or_insert(0);
        *entry = (*entry).max(version);
    }
}

/// Why the trust state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file of the trust state could not be read or written.
    #[error("trust state {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No root is available: neither a history nor the shipped root.
    #[error("no trusted root: the root history {history} is empty and {shipped} cannot be read")]
    NoRoot {
        /// The history folder.
        history: PathBuf,
        /// The shipped root.
        shipped: PathBuf,
        /// Why the shipped root could not be read.
        source: std::io::Error,
    },
}

/// The trust state folder.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
}

/// What [`TrustStore::load_floor`] found.
#[derive(Debug)]
pub struct LoadedFloor {
    /// The floor to enforce.
    pub floor: Floor,
    /// Set when `floor.json` existed but could not be read; the floor was rebuilt and this says
    /// why (to be reported loudly).
    pub damaged: Option<JsonFileError>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_owned(),
        source,
    }
}

impl TrustStore {
    /// The trust state under `<state_dir>/trust`, created if needed.
    pub fn open(state_dir: &Path) -> Result<TrustStore, TrustError> {
        let dir = state_dir.join("trust");
        let roots = dir.join("roots");
        fs::create_dir_all(&roots).map_err(io(&roots))?;
        Ok(TrustStore { dir })
    }

    fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }

    fn floor_path(&self) -> PathBuf {
        self.dir.join("floor.json")
    }

    /// Root versions in the history, newest first.
    pub fn root_versions(&self) -> Result<Vec<u64>, TrustError> {
        let dir = self.roots_dir();
        let mut versions: Vec<u64> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".root.json"))
                    .and_then(|v| v.parse().ok())
            })
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        Ok(versions)
    }

    /// The roots to start verification from, newest first: every readable root of the history,
    /// then the shipped root. The caller uses the first one that verifies; the root floor stops
    /// an older one from being accepted as the end result.
    pub fn candidate_roots(&self, shipped: &Path) -> Result<Vec<(String, Vec<u8>)>, TrustError> {
        let mut roots = Vec::new();
        for version in self.root_versions()? {
            let path = self.roots_dir().join(format!("{version}.root.json"));
            match fs::read(&path) {
                Ok(bytes) => roots.push((path.display().to_string(), bytes)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %Chain(&e), "unreadable root in the history")
                }
            }
        }
        match fs::read(shipped) {
            Ok(bytes) => roots.push((shipped.display().to_string(), bytes)),
            Err(source) if roots.is_empty() => {
                return Err(TrustError::NoRoot {
                    history: self.roots_dir(),
                    shipped: shipped.to_owned(),
                    source,
                });
            }
            Err(_) => {}
        }
        Ok(roots)
    }

    /// Adds a verified root to the history (atomically; an existing version is kept).
    pub fn remember_root(&self, version: u64, bytes: &[u8]) -> Result<(), TrustError> {
        let path = self.roots_dir().join(format!("{version}.root.json"));
        if path.exists() {
            return Ok(());
        }
        defect_shared::atomic::write(&path, bytes).map_err(io(&path))
    }

    /// Reads the floor. A missing file is an empty floor; a damaged one is rebuilt from the root
    /// history and `evidence` (model versions found on disk), and reported through
    /// [`LoadedFloor::damaged`].
    pub fn load_floor(&self, evidence: &BTreeMap<String, u64>) -> Result<LoadedFloor, TrustError> {
        let path = self.floor_path();
        let (mut floor, damaged) = match crate::json_file::read::<Floor>(&path) {
            Ok(floor) => (floor.unwrap_or_default(), None),
            Err(error) => (Floor::default(), Some(error)),
        };
        floor.v = 1;
        if let Some(newest) = self.root_versions()?.first() {
            floor.root = floor.root.max(*newest);
        }
        for (model, version) in evidence {
            floor.raise_model_version(model, *version);
        }
        Ok(LoadedFloor { floor, damaged })
    }

    /// Persists the floor atomically.
    pub fn save_floor(&self, floor: &Floor) -> Result<(), TrustError> {
        let path = self.floor_path();
        let bytes = serde_json::to_vec_pretty(floor).map_err(|e| TrustError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        defect_shared::atomic::write(&path, &bytes).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_listed_newest_first_before_the_shipped_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust = TrustStore::open(dir.path()).expect("open");
        trust.remember_root(1, b"one").expect("1");
        trust.remember_root(3, b"three").expect("3");
        trust.remember_root(2, b"two").expect("2");
        let shipped = dir.path().join("shipped.json");
        fs::write(&shipped, b"shipped").expect("write");
        let roots = trust.candidate_roots(&shipped).expect("roots");
        let bodies: Vec<_> = roots.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(bodies, [&b"three"[..], b"two", b"one", b"shipped"]);
    }

    #[test]
    fn a_damaged_floor_is_reported_and_rebuilt_from_evidence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust = TrustStore::open(dir.path()).expect("open");
        let mut floor = Floor {
            timestamp: 9,
            ..Floor::default()
        };
        floor.raise_model_version("m", 4);
        trust.save_floor(&floor).expect("save");
        assert_eq!(
            trust
                .load_floor(&BTreeMap::new())
                .expect("load")
                .floor
                .timestamp,
            9
        );
        trust.remember_root(2, b"r").expect("root");
        fs::write(dir.path().join("trust/floor.json"), b"{\"v\":1,\"ro").expect("tear");
        let evidence = BTreeMap::from([("m".to_owned(), 3)]);
        let loaded = trust.load_floor(&evidence).expect("load");
        assert!(loaded.damaged.is_some());
        assert_eq!(loaded.floor.root, 2);
        assert_eq!(loaded.floor.model_version("m"), 3);
    }
}
