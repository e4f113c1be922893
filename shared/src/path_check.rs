//! Whether the files and folders a configuration names are there and usable, by the user that
//! runs the check.
//!
//! This module owns the probes behind both daemons' `check-config`: a file that must be
//! readable, a folder that must be readable or writable, a folder that is created at start-up
//! if missing (its parent must then be writable). A folder is probed for writing by creating and
//! removing a file in it, which answers for the running user, its groups and any ACL or
//! read-only mount; so `check-config` run as the service user (as the packaged units'
//! `ExecStartPre` do) answers for the service. Each problem is added to [`Problems`] under the
//! key that names the path.

use std::path::Path;

use crate::config_report::Problems;

/// What a folder must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Listing and reading its files.
    Read,
    /// Reading, and creating and removing files.
    ReadWrite,
}

/// `path` must be a file this user can read.
pub fn readable_file(problems: &mut Problems, key: &str, path: &Path) {
    match std::fs::File::open(path) {
        Ok(file) => {
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                problems.add(key, format!("{} is a folder, not a file", path.display()));
            }
        }
        Err(error) => problems.add(key, format!("{}: {}", path.display(), describe(&error))),
    }
}

/// `path` must be a folder this user can use with `access`.
pub fn folder(problems: &mut Problems, key: &str, path: &Path, access: Access) {
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_dir() => {
            problems.add(key, format!("{} is not a folder", path.display()));
            return;
        }
        Ok(_) => {}
        Err(error) => {
            problems.add(key, format!("{}: {}", path.display(), describe(&error)));
            return;
        }
    }
    if let Err(error) = std::fs::read_dir(path) {
        problems.add(
            key,
            format!("{}: cannot list it: {}", path.display(), describe(&error)),
        );
        return;
    }
    if access == Access::ReadWrite
        && let Err(error) = probe_write(path)
    {
        problems.add(
            key,
            format!(
                "{}: cannot create files in it: {}",
                path.display(),
                describe(&error)
            ),
        );
    }
}

/// `path` is a folder the daemon uses with `access` and creates at start-up when missing: it
/// must be usable if it exists, and its parent writable if it does not.
pub fn folder_or_creatable(problems: &mut Problems, key: &str, path: &Path, access: Access) {
    if path.exists() {
        folder(problems, key, path, access);
        return;
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if parent.is_dir() => {
            if let Err(error) = probe_write(parent) {
                problems.add(
                    key,
                    format!(
                        "{} does not exist and cannot be created in {}: {}",
                        path.display(),
                        parent.display(),
                        describe(&error)
                    ),
                );
            }
        }
        Some(parent) if parent.exists() => {
            problems.add(key, format!("{} is not a folder", parent.display()))
        }
        Some(parent) => folder_or_creatable(problems, key, parent, Access::ReadWrite),
        None => {}
    }
}

/// The folder a file is written into (a report, a health file) must be writable.
pub fn writable_parent(problems: &mut Problems, key: &str, file: &Path) {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        folder_or_creatable(problems, key, parent, Access::ReadWrite);
    }
}

/// Creates and removes a probe file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".check-config-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// An I/O error as a person reads it.
fn describe(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied for this user (run check-config as the service user)".to_owned()
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(problems: &Problems) -> Vec<String> {
        problems.iter().map(|p| format!("{p}")).collect()
    }

    #[test]
    fn missing_files_and_folders_are_named_by_key_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("root.json");
        std::fs::write(&file, b"{}").expect("write");
        let mut problems = Problems::new();
        readable_file(&mut problems, "repository.trusted_root", &file);
        folder(&mut problems, "hot", dir.path(), Access::ReadWrite);
        folder_or_creatable(
            &mut problems,
            "state",
            &dir.path().join("a/b"),
            Access::ReadWrite,
        );
        writable_parent(
            &mut problems,
            "health",
            &dir.path().join("state/health.json"),
        );
        assert!(problems.is_empty(), "{:?}", keys(&problems));

        let missing = dir.path().join("missing");
        readable_file(&mut problems, "repository.trusted_root", &missing);
        folder(
            &mut problems,
            "station[0].hot_folder.path",
            &missing,
            Access::ReadWrite,
        );
        folder(&mut problems, "file_as_folder", &file, Access::Read);
        readable_file(&mut problems, "folder_as_file", dir.path());
        folder_or_creatable(
            &mut problems,
            "under_a_file",
            &file.join("x"),
            Access::ReadWrite,
        );
        let said = keys(&problems);
        assert_eq!(said.len(), 5, "{said:?}");
        assert!(
            said[0].starts_with("repository.trusted_root: ") && said[0].ends_with("does not exist")
        );
        assert!(
            said[1].starts_with("station[0].hot_folder.path: "),
            "{said:?}"
        );
        assert!(said[2].ends_with("is not a folder"), "{said:?}");
        assert!(said[3].ends_with("is a folder, not a file"), "{said:?}");
        assert!(said[4].ends_with("is not a folder"), "{said:?}");
    }
}
