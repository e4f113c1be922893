//! A hot folder's record of the frame files it is deciding, kept across crashes.
//!
//! This module owns `<state_dir>/in-flight/<station>/<file>`: a small JSON marker
//! (`{"deaths":N,"sha256":"…"}`) written before a frame file is decided and removed once the
//! file is completed. A marker still there when the agent starts means the agent died while
//! that frame was in flight: it is decided again, and a frame that was in flight at
//! [`QUARANTINE_AFTER`] deaths is moved to `<state_dir>/quarantine/<station>/` instead of being
//! decided once more, so one frame that crashes the agent cannot keep the line down.
//!
//! Markers are replaced atomically (temporary file, rename) but not fsynced: they must survive
//! the agent's own death (an abort, a kill), which leaves the page cache intact, not a power
//! cut, after which a frame is at worst decided once more.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Deaths with a frame in flight after which the frame is quarantined.
pub const QUARANTINE_AFTER: u32 = 2;

/// One station's in-flight markers and quarantine folder.
#[derive(Debug, Clone)]
pub struct InFlight {
    markers: PathBuf,
    quarantine: PathBuf,
}

/// A marker's content.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// How often the agent died with this frame in flight.
    deaths: u32,
    /// SHA-256 of the file's content: a new file under an old name starts afresh.
    sha256: String,
}

/// What taking a frame file again tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Not in flight before: decide it.
    First,
    /// The agent died `deaths` times with it in flight: decide it again.
    Again {
        /// Deaths so far.
        deaths: u32,
    },
    /// The agent died [`QUARANTINE_AFTER`] times or more with it in flight: quarantine it.
    Quarantine {
        /// Deaths so far.
        deaths: u32,
    },
}

/// Why the in-flight record failed.
#[derive(Debug, thiserror::Error)]
#[error("in-flight record {path}")]
pub struct InFlightError {
    /// The marker or folder.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// `<state_dir>/quarantine/<station>/`: where `station`'s quarantined frame files wait for a
/// person to look at them (the line monitor raises `quarantined_frames` while any does).
pub fn quarantine_folder(state_dir: &Path, station: &str) -> PathBuf {
    state_dir.join("quarantine").join(station)
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> InFlightError + '_ {
    move |source| InFlightError {
        path: path.to_owned(),
        source,
    }
}

impl InFlight {
    /// The record of `station` under `state_dir`; its folders are made when missing.
    pub fn open(state_dir: &Path, station: &str) -> Result<InFlight, InFlightError> {
        let markers = state_dir.join("in-flight").join(station);
        std::fs::create_dir_all(&markers).map_err(err(&markers))?;
        let quarantine = quarantine_folder(state_dir, station);
        std::fs::create_dir_all(&quarantine).map_err(err(&quarantine))?;
        Ok(InFlight {
            markers,
            quarantine,
        })
    }

    /// Whether the agent died with the file `name` in flight (its marker is there).
    pub fn is_suspect(&self, name: &str) -> bool {
        self.markers.join(name).exists()
    }

    /// Records that the file `name` with content `sha256` is being taken, and says what the
    /// record held: whether the agent died with it in flight before. The marker counts one
    /// more death from now on, until [`InFlight::end`] removes it.
    pub fn begin(&self, name: &str, sha256: &str) -> Result<Attempt, InFlightError> {
        let path = self.markers.join(name);
        let deaths = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Marker>(&bytes)
                .ok()
                .filter(|marker| marker.sha256 == sha256)
                .map_or(0, |marker| marker.deaths),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(err(&path)(e)),
        };
        if deaths >= QUARANTINE_AFTER {
            return Ok(Attempt::Quarantine { deaths });
        }
        let marker = Marker {
            deaths: deaths + 1,
            sha256: sha256.to_owned(),
        };
        let bytes = serde_json::to_vec(&marker).map_err(|e| err(&path)(e.into()))?;
        let temporary = self.markers.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(err(&path))?;
        Ok(match deaths {
            0 => Attempt::First,
            deaths => Attempt::Again { deaths },
        })
    }

    /// The file `name` is completed (decided and removed, or quarantined): forgets it.
    pub fn end(&self, name: &str) {
        let path = self.markers.join(name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %defect_shared::error_chain::Chain(&e), "cannot remove the in-flight marker");
        }
    }

    /// Moves `file` into the quarantine folder (made again when an operator removed it whole),
    /// under a name no earlier quarantined file has; returns where it went.
    pub fn quarantine(&self, file: &Path, name: &str) -> Result<PathBuf, InFlightError> {
        std::fs::create_dir_all(&self.quarantine).map_err(err(&self.quarantine))?;
        let mut target = self.quarantine.join(name);
        let mut n = 1;
        while target.exists() {
            target = self.quarantine.join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(file, &target).map_err(err(file))?;
        Ok(target)
    }

    /// Removes the markers of files for which `gone(name)` is true (the agent died after the
    /// file left the folder but before its marker did); returns how many.
    pub fn forget_gone(&self, gone: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.markers) else {
            return 0;
        };
        let mut count = 0;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || gone(&name) {
                let _ = std::fs::remove_file(entry.path());
                count += 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_in_flight_at_two_deaths_is_quarantined_and_a_new_content_starts_afresh() {
        let state = tempfile::tempdir().expect("tempdir");
        let record = InFlight::open(state.path(), "cam1").expect("open");
        assert_eq!(
            record.begin("part-1.jpg", "aa").expect("begin"),
            Attempt::First
        );
        // The agent dies: the next start finds the marker.
        assert_eq!(
            record.begin("part-1.jpg", "aa").expect("begin"),
            Attempt::Again { deaths: 1 }
        );
        assert_eq!(
            record.begin("part-1.jpg", "aa").expect("begin"),
            Attempt::Quarantine { deaths: 2 }
        );
        // The camera wrote another image under the same name.
        assert_eq!(
            record.begin("part-1.jpg", "bb").expect("begin"),
            Attempt::First
        );
        record.end("part-1.jpg");
        assert_eq!(
            record.begin("part-1.jpg", "bb").expect("begin"),
            Attempt::First
        );
    }

    #[test]
    fn quarantined_files_never_overwrite_each_other_and_stale_markers_are_forgotten() {
        let state = tempfile::tempdir().expect("tempdir");
        let record = InFlight::open(state.path(), "cam1").expect("open");
        let hot = tempfile::tempdir().expect("hot");
        for content in [b"one", b"two"] {
            let file = hot.path().join("part-7.jpg");
            std::fs::write(&file, content).expect("write");
            record.quarantine(&file, "part-7.jpg").expect("quarantine");
        }
        let q = state.path().join("quarantine/cam1");
        assert_eq!(std::fs::read(q.join("part-7.jpg")).expect("first"), b"one");
        assert_eq!(
            std::fs::read(q.join("part-7.jpg.1")).expect("second"),
            b"two"
        );

        record.begin("kept.jpg", "aa").expect("begin");
        record.begin("gone.jpg", "aa").expect("begin");
        assert_eq!(record.forget_gone(|name| name == "gone.jpg"), 1);
        assert_eq!(
            record.begin("kept.jpg", "aa").expect("begin"),
            Attempt::Again { deaths: 1 }
        );
        assert_eq!(
            record.begin("gone.jpg", "aa").expect("begin"),
            Attempt::First
        );
    }
}
