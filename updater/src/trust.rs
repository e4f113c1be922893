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
//! trust/floor.copy.json       the same record, written right after floor.json
//! ```
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync of the folder), so
//! after a power cut each holds its old or its new content. The floor is kept twice: it is read
//! as the highest of each version over every copy that reads, raised by the evidence on disk
//! (root history, bundles in the model store), so losing or corrupting one file lowers no
//! version. A copy that is missing or cannot be read is reported loudly; the next save writes
//! both again.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use defect_shared::error_chain::Chain;
use serde::{Deserialize, Serialize};

use crate::json_file::JsonFileError;

/// Format of the floor record written now: 2, kept in two copies. Version 1 was one file, so a
/// version-1 `floor.json` without a copy is an earlier updater's, not a lost copy.
pub const FLOOR_FORMAT: u32 = 2;

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
    /// The copies of the floor that exist but could not be read (to be reported loudly); the
    /// floor was taken from the other copy and the evidence on disk.
    pub damaged: Vec<JsonFileError>,
    /// The copies of the floor that are gone while another copy exists (to be reported
    /// loudly: something deleted a file of the trust state).
    pub missing: Vec<PathBuf>,
}

impl Floor {
    /// Raises every version of this floor to at least `other`'s.
    fn raise_to(&mut self, other: &Floor) {
        self.root = self.root.max(other.root);
        self.timestamp = self.timestamp.max(other.timestamp);
        self.snapshot = self.snapshot.max(other.snapshot);
        self.targets = self.targets.max(other.targets);
        for (model, version) in &other.model_versions {
            self.raise_model_version(model, *version);
        }
        self.latest_clock_ms = self.latest_clock_ms.max(other.latest_clock_ms);
    }
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

    fn floor_copy_path(&self) -> PathBuf {
        self.dir.join("floor.copy.json")
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

    /// Reads the floor: the highest of each version over both copies that read, raised by the
    /// root history and `evidence` (model versions found on disk). No copy at all is an empty
    /// floor (a new box); a damaged or missing copy is reported through
    /// [`LoadedFloor::damaged`] and [`LoadedFloor::missing`].
    pub fn load_floor(&self, evidence: &BTreeMap<String, u64>) -> Result<LoadedFloor, TrustError> {
        let mut floor = Floor::default();
        let mut damaged = Vec::new();
        let mut absent = Vec::new();
        let mut newest_format = None;
        for path in [self.floor_path(), self.floor_copy_path()] {
            match crate::json_file::read::<Floor>(&path) {
                Ok(Some(copy)) => {
                    floor.raise_to(&copy);
                    newest_format = newest_format.max(Some(copy.v));
                }
                Ok(None) => absent.push(path),
                Err(error) => damaged.push(error),
            }
        }
        // A missing copy is news only when a copy that reads says it was kept twice (format 2),
        // or one copy is damaged: a format-1 floor.json alone is an earlier updater's record.
        let kept_twice = newest_format.is_some_and(|v| v >= FLOOR_FORMAT) || !damaged.is_empty();
        let missing = if kept_twice { absent } else { Vec::new() };
        floor.v = FLOOR_FORMAT;
        if let Some(newest) = self.root_versions()?.first() {
            floor.root = floor.root.max(*newest);
        }
        for (model, version) in evidence {
            floor.raise_model_version(model, *version);
        }
        Ok(LoadedFloor {
            floor,
            damaged,
            missing,
        })
    }

    /// Persists the floor atomically, to both copies in turn: a crash between the two leaves
    /// one copy new and one old, and the load takes the higher.
    pub fn save_floor(&self, floor: &Floor) -> Result<(), TrustError> {
        let path = self.floor_path();
        let bytes = serde_json::to_vec_pretty(floor).map_err(|e| TrustError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        defect_shared::atomic::write(&path, &bytes).map_err(io(&path))?;
        let copy = self.floor_copy_path();
        defect_shared::atomic::write(&copy, &bytes).map_err(io(&copy))
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
    fn with_both_copies_damaged_the_floor_is_rebuilt_from_the_roots_and_the_store() {
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
        fs::write(dir.path().join("trust/floor.copy.json"), b"{\"v\":1,\"ro")
            .expect("tear the copy");
        let evidence = BTreeMap::from([("m".to_owned(), 3)]);
        let loaded = trust.load_floor(&evidence).expect("load");
        assert_eq!(loaded.damaged.len(), 2);
        assert_eq!(loaded.floor.root, 2);
        assert_eq!(loaded.floor.model_version("m"), 3);
    }

    #[test]
    fn losing_or_corrupting_one_copy_of_the_floor_lowers_no_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust = TrustStore::open(dir.path()).expect("open");
        let mut floor = Floor {
            v: FLOOR_FORMAT,
            root: 1,
            timestamp: 9,
            snapshot: 8,
            targets: 7,
            latest_clock_ms: 1_700_000_000_000,
            ..Floor::default()
        };
        floor.raise_model_version("m", 4);
        trust.save_floor(&floor).expect("save");
        let main = dir.path().join("trust/floor.json");
        let copy = dir.path().join("trust/floor.copy.json");
        let none = BTreeMap::new();
        for (what, damage) in [
            ("main torn", (&main, Some(&b"{\"v\":1,\"time"[..]))),
            ("main deleted", (&main, None)),
            ("main emptied", (&main, Some(&b""[..]))),
            ("copy torn", (&copy, Some(&b"{"[..]))),
            ("copy deleted", (&copy, None)),
        ] {
            trust.save_floor(&floor).expect("save both");
            let (path, bytes) = damage;
            match bytes {
                Some(bytes) => fs::write(path, bytes).expect("damage"),
                None => fs::remove_file(path).expect("delete"),
            }
            let loaded = trust.load_floor(&none).expect("load");
            assert_eq!(loaded.floor, floor, "{what}");
            assert_eq!(
                loaded.damaged.len() + loaded.missing.len(),
                1,
                "{what}: {loaded:?}"
            );
        }
    }

    #[test]
    fn a_floor_kept_as_one_file_by_an_earlier_version_loads_without_alarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust = TrustStore::open(dir.path()).expect("open");
        fs::write(
            dir.path().join("trust/floor.json"),
            br#"{"v":1,"root":1,"timestamp":5,"snapshot":5,"targets":5,"model_versions":{},"latest_clock_ms":0}"#,
        )
        .expect("write");
        let loaded = trust.load_floor(&BTreeMap::new()).expect("load");
        assert_eq!(loaded.floor.timestamp, 5);
        assert!(
            loaded.damaged.is_empty() && loaded.missing.is_empty(),
            "{loaded:?}"
        );
    }
}
