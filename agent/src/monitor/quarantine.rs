//! A station's quarantine folder, as the monitoring task counts it.
//!
//! This module owns reading `<state_dir>/quarantine/<station>/` (the hot folder moves a frame
//! file there when the agent died twice with it in flight; `sources::in_flight` owns that
//! move): the names of the files it holds, counted when a part is quarantined, on every
//! monitoring tick and at start-up. A folder that is gone (an operator removed it whole) holds
//! nothing; a folder that cannot be read keeps its last count and is reported once. It does
//! not judge the count: the `quarantined_frames` rule is in `alarms`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use defect_shared::error_chain::Chain;

/// File names shown in one log line; more are summarised.
const NAMES_LOGGED: usize = 10;

/// One station's quarantine folder.
#[derive(Debug)]
pub(super) struct QuarantineFolder {
    /// The folder.
    path: PathBuf,
    /// The last read failed (logged once until a read succeeds again).
    unreadable: bool,
}

impl QuarantineFolder {
    pub(super) fn new(path: PathBuf) -> QuarantineFolder {
        QuarantineFolder {
            path,
            unreadable: false,
        }
    }

    /// The folder.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the files the folder holds, sorted; `None` when it cannot be read.
    pub(super) fn files(&mut self, station: &str) -> Option<Vec<String>> {
        match read_names(&self.path) {
            Ok(names) => {
                self.unreadable = false;
                Some(names)
            }
            Err(error) => {
                if !self.unreadable {
                    tracing::warn!(station, folder = %self.path.display(), error = %Chain(&error), "cannot count the files in the quarantine folder; keeping the last count");
                }
                self.unreadable = true;
                None
            }
        }
    }
}

/// Regular files in `folder`, by name; none when the folder does not exist.
fn read_names(folder: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `names` for a log line: the first [`NAMES_LOGGED`], then how many more.
pub(super) fn listed(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(NAMES_LOGGED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_LOGGED {
        text.push_str(&format!(" and {} more", names.len() - NAMES_LOGGED));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_by_name_and_a_removed_folder_holds_none() {
        let state = tempfile::tempdir().expect("tempdir");
        let path = state.path().join("quarantine/cam1");
        std::fs::create_dir_all(path.join("not-a-file")).expect("folders");
        let mut folder = QuarantineFolder::new(path.clone());
        assert_eq!(folder.files("cam1"), Some(Vec::new()));
        std::fs::write(path.join("part-7.jpg"), b"x").expect("write");
        std::fs::write(path.join("part-10.jpg"), b"y").expect("write");
        assert_eq!(
            folder.files("cam1"),
            Some(vec!["part-10.jpg".to_owned(), "part-7.jpg".to_owned()])
        );
        std::fs::remove_dir_all(&path).expect("operator removes the folder");
        assert_eq!(folder.files("cam1"), Some(Vec::new()));
    }

    #[test]
    fn a_long_list_of_names_is_summarised() {
        let names: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
        assert_eq!(listed(&names[..2]), "f0, f1");
        assert_eq!(
            listed(&names),
            "f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 and 2 more"
        );
    }
}
