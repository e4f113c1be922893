//! The on-disk model store shared by the agent (reader) and the updater (writer).
//!
//! This module owns the store's layout and its crash-safe updates:
//!
//! ```text
//! <root>/
//!   bundles/<sha256>.dmb   content-addressed bundles, complete and verified
//!   staging/               partial writes; never read as models
//!   current  -> bundles/<sha256>.dmb   the bundle to serve
//!   previous -> bundles/<sha256>.dmb   the one before, for rollback
//!   factory  -> bundles/<sha256>.dmb   the shipped bundle
//! ```
//!
//! A bundle is written to `staging/`, fsynced, checked, renamed into `bundles/` and the folder
//! fsynced; a pointer is switched by creating a temporary symlink and `rename(2)`-ing it over
//! the old one, then fsyncing the root. After a power cut at any instant, `current` names a
//! complete bundle (the old one or the new one). What to install and when is the updater's
//! business, not this module's.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, BundleError, sha256_hex};

/// A named pointer in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointer {
    /// The bundle to serve.
    Current,
    /// The bundle served before `current`.
    Previous,
    /// The shipped bundle.
    Factory,
    /// A bundle on probation: run in shadow beside `current`, deciding nothing.
    Candidate,
}

impl Pointer {
    /// File name of the pointer in the store root.
    pub const fn file_name(self) -> &'static str {
        match self {
            Pointer::Current => "current",
            Pointer::Previous => "previous",
            Pointer::Factory => "factory",
            Pointer::Candidate => "candidate",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder of the store could not be read or written.
    #[error("model store {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A pointer names something that is not a bundle of this store.
    #[error("model store pointer {path} names {target}, not a bundle of the store")]
    BadPointer {
        /// The pointer.
        path: PathBuf,
        /// Where it points.
        target: String,
    },
    /// The bundle bytes are not a valid bundle.
    #[error("model store")]
    Bundle(#[from] BundleError),
}

/// A model store rooted at a folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// The store at `root`, for reading only: nothing is created or written (a reader such as
    /// the agent may see the store read-only).
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_owned(),
        }
    }

    /// Opens (and creates, if needed) the store at `root`, for writing.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [root.to_owned(), root.join("bundles"), root.join("staging")] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Store {
            root: root.to_owned(),
        })
    }

    /// The store's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the bundle with this SHA-256 (whether or not it exists).
    pub fn bundle_path(&self, sha256: &str) -> PathBuf {
        self.root.join("bundles").join(format!("{sha256}.dmb"))
    }

    /// The SHA-256 the pointer names, or `None` when the pointer does not exist.
    pub fn pointer(&self, pointer: Pointer) -> Result<Option<String>, StoreError> {
        let path = self.root.join(pointer.file_name());
        let target = match fs::read_link(&path) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let text = target.to_string_lossy().into_owned();
        let sha = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".dmb"))
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|_| target.parent() == Some(Path::new("bundles")))
            .ok_or(StoreError::BadPointer {
                path: path.clone(),
                target: text,
            })?;
        Ok(Some(sha.to_owned()))
    }

    /// Reads and checks the bundle a pointer names.
    pub fn load(&self, pointer: Pointer) -> Result<Option<Bundle>, StoreError> {
        let Some(sha) = self.pointer(pointer)? else {
            return Ok(None);
        };
        let path = self.bundle_path(&sha);
        let bytes = fs::read(&path).map_err(io(&path))?;
        Ok(Some(Bundle::from_bytes(bytes)?))
    }

    /// Adds bundle bytes to the store (staging, fsync, check, rename, fsync) and returns their
    /// SHA-256. Adding a bundle that is already there only returns its digest.
    pub fn add(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let bundle = Bundle::from_bytes(bytes.to_vec())?;
        let sha = bundle.digest().to_owned();
        debug_assert_eq!(sha, sha256_hex(bytes));
        let destination = self.bundle_path(&sha);
        if destination.exists() {
            return Ok(sha);
        }
        let staging = self.root.join("staging").join(format!("{sha}.partial"));
        {
            let mut file = File::create(&staging).map_err(io(&staging))?;
            file.write_all(bytes).map_err(io(&staging))?;
            file.sync_all().map_err(io(&staging))?;
        }
        fs::rename(&staging, &destination).map_err(io(&destination))?;
        sync_dir(&self.root.join("bundles"))?;
        Ok(sha)
    }

    /// Points `pointer` at the bundle `sha256` atomically (temporary symlink renamed over the
    /// old pointer, then the root fsynced).
    pub fn set_pointer(&self, pointer: Pointer, sha256: &str) -> Result<(), StoreError> {
        let bundle = self.bundle_path(sha256);
        if !bundle.is_file() {
            return Err(StoreError::BadPointer {
                path: self.root.join(pointer.file_name()),
                target: bundle.display().to_string(),
            });
        }
        let target = Path::new("bundles").join(format!("{sha256}.dmb"));
        let temporary = self.root.join(format!(
            ".{}.{}.tmp",
            pointer.file_name(),
            std::process::id()
        ));
        let _ = fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&target, &temporary).map_err(io(&temporary))?;
        let path = self.root.join(pointer.file_name());
        fs::rename(&temporary, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }

    /// Removes a pointer (the bundle stays); removing an absent pointer is not an error.
    pub fn clear_pointer(&self, pointer: Pointer) -> Result<(), StoreError> {
        let path = self.root.join(pointer.file_name());
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Makes `sha256` current and the old current previous.
    pub fn activate(&self, sha256: &str) -> Result<(), StoreError> {
        match self.pointer(Pointer::Current)? {
            Some(old) if old == sha256 => return Ok(()),
            Some(old) => self.set_pointer(Pointer::Previous, &old)?,
            None => {}
        }
        self.set_pointer(Pointer::Current, sha256)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    defect_shared::atomic::sync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_bundle() -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/foreign");
        Bundle::create_from_files(
            &dir.join("manifest.toml"),
            &dir.join("brightness-rule.onnx"),
        )
        .expect("fixture bundle")
        .bytes()
        .to_vec()
    }

    #[test]
    fn add_and_activate_switch_current_and_previous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.pointer(Pointer::Current).expect("read"), None);
        let bytes = fixture_bundle();
        let sha = store.add(&bytes).expect("add");
        assert_eq!(store.add(&bytes).expect("again"), sha);
        store.activate(&sha).expect("activate");
        assert_eq!(
            store.pointer(Pointer::Current).expect("read"),
            Some(sha.clone())
        );
        let loaded = store.load(Pointer::Current).expect("load").expect("some");
        assert_eq!(loaded.digest(), sha);
        assert_eq!(store.pointer(Pointer::Previous).expect("read"), None);
    }

    #[test]
    fn garbage_is_refused_and_a_foreign_pointer_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.add(b"not a bundle").is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("current")).expect("link");
        let err = store.pointer(Pointer::Current).expect_err("foreign");
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }
}
