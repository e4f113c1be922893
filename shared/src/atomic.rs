//! Crash-safe replacement of small files: the updater's state, the model health report, the
//! signed repository metadata, captured frames and their records.
//!
//! This module owns one pattern: write the new content to a temporary file in the same folder,
//! fsync it, `rename(2)` it over the old file, then fsync the folder. After a power cut at any
//! instant a reader finds the old content or the new one, never a torn mix. It does not own
//! what the callers' errors say: each caller names the file in its own error type.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably.
///
/// The temporary file (`.NAME.PID.tmp` beside `path`) is removed again when the write or the
/// rename fails.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_dir(dir)
}

/// Fsyncs a folder, so that a rename or a new entry in it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write(&path, b"one").expect("first");
        write(&path, b"two").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_content_and_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write(&path, b"one").expect("first");
        // A folder in the way of the rename: the write fails, the old file is untouched.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inner")).expect("mkdir");
        assert!(write(&blocked, b"two").is_err());
        assert_eq!(fs::read(&path).expect("read"), b"one");
        let temporaries = fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert_eq!(temporaries, 0);
    }
}
