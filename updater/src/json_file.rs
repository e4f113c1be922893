//! Reading the updater's small JSON files: its state, its status and the anti-rollback floor.
//!
//! This module owns what a failed read says: which file, and whether it could not be read or
//! does not parse. A missing file is not an error here (each caller has its own empty value);
//! what a caller does with a damaged file (start empty, rebuild, report) is its own business.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a JSON file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// The file exists but could not be read.
    #[error("{}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not this schema's JSON (torn, empty, or another format).
    #[error("{}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

/// The content of `path`; `None` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, JsonFileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| JsonFileError::Parse {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JsonFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_none_and_torn_names_the_file_and_the_json_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert!(matches!(read::<Vec<u32>>(&path), Ok(None)));
        std::fs::write(&path, b"[1, 2").expect("write");
        let error = read::<Vec<u32>>(&path).expect_err("torn");
        assert!(matches!(error, JsonFileError::Parse { .. }));
        let text = defect_shared::error_chain::chain(&error);
        assert!(
            text.starts_with(&format!("{}: EOF", path.display())),
            "{text}"
        );
        std::fs::write(&path, b"[1, 2]").expect("write");
        assert_eq!(read::<Vec<u32>>(&path).expect("read"), Some(vec![1, 2]));
    }
}
