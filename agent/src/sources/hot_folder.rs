//! The hot folder a camera (or its FTP upload) writes frames into.
//!
//! This module owns picking up complete files only: a file is taken when it is closed after
//! writing or renamed into the folder (inotify through `notify`), never while it is written;
//! temporary names (`.name`, `*.tmp`, `*.part`, `*.partial`, `*.filepart`, `*~`) are ignored
//! until renamed. It derives the part id from the file name with the station's pattern, and
//! removes or moves the file only once its outcome is in the result log. Files already in the
//! folder at start-up are decided too, oldest name first.

use defect_shared::error_chain::Chain;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FrameSource;
use crate::outcome::{NoDecisionReason, unix_ms};
use crate::pipeline::{Completion, FrameJob, Pipeline};

/// Why a hot folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum HotFolderError {
    /// The folder does not exist or cannot be read.
    #[error("hot folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// inotify refused the watch.
    #[error("cannot watch hot folder {path}: {source}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The part id pattern does not compile (validated earlier; kept for safety).
    #[error("station {station}: part_id_pattern: {source}")]
    Pattern {
        /// The station.
        station: String,
        /// The regex error.
        source: regex::Error,
    },
}

/// A station's hot folder, watched and ready to deliver frames.
pub struct HotFolder {
    station: String,
    section: HotFolderSection,
    pattern: regex::Regex,
    max_frame_bytes: u64,
    watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<PathBuf>,
}

/// Whether a file name is a temporary one a camera writes before renaming it into place.
pub fn is_temporary(name: &str) -> bool {
    const SUFFIXES: [&str; 6] = [".tmp", ".part", ".partial", ".filepart", ".crdownload", "~"];
    name.starts_with('.') || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// A watched folder's frame path, shared by its task and its completions.
struct Station {
    id: String,
    section: HotFolderSection,
    pattern: regex::Regex,
    pipeline: Pipeline,
    max_frame_bytes: u64,
    /// Files taken and not yet completed, so a second event does not decide them twice.
    taken: Arc<Mutex<HashSet<PathBuf>>>,
}

impl HotFolder {
    /// Watches the station's hot folder (from now on, so no file closed before the start is
    /// missed); frames are delivered once the source is started.
    pub fn open(
        station: &str,
        section: &HotFolderSection,
        max_frame_bytes: u64,
    ) -> Result<HotFolder, HotFolderError> {
        let folder = section.path.clone();
        if let Err(source) = std::fs::read_dir(&folder) {
            return Err(HotFolderError::Folder {
                path: folder,
                source,
            });
        }
        if let (AfterDecision::Move, Some(to)) = (section.after, &section.move_to) {
            std::fs::create_dir_all(to).map_err(|source| HotFolderError::Folder {
                path: to.clone(),
                source,
            })?;
        }
        let pattern = regex::Regex::new(&section.part_id_pattern).map_err(|source| {
            HotFolderError::Pattern {
                station: station.to_owned(),
                source,
            }
        })?;
        let (tx, events) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Some(path) = event.ok().as_ref().and_then(complete_file) {
                    let _ = tx.send(path);
                }
            })
            .map_err(|source| HotFolderError::Watch {
                path: folder.clone(),
                source,
            })?;
        watcher
            .watch(&folder, RecursiveMode::NonRecursive)
            .map_err(|source| HotFolderError::Watch {
                path: folder.clone(),
                source,
            })?;
        Ok(HotFolder {
            station: station.to_owned(),
            section: section.clone(),
            pattern,
            max_frame_bytes,
            watcher,
            events,
        })
    }
}

/// The file an event says is complete: closed after writing, or renamed into the folder.
fn complete_file(event: &notify::Event) -> Option<PathBuf> {
    match event.kind {
        EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)) => {
            event.paths.first().cloned()
        }
        EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::To)) => {
            event.paths.first().cloned()
        }
        EventKind::Modify(notify::event::ModifyKind::Name(notify::event::RenameMode::Both)) => {
            event.paths.get(1).cloned()
        }
        _ => None,
    }
}

impl FrameSource for HotFolder {
    fn describe(&self) -> String {
        format!(
            "hot folder {} (station {})",
            self.section.path.display(),
            self.station
        )
    }

    fn start(
        self: Box<Self>,
        pipeline: Pipeline,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let HotFolder {
            station,
            section,
            pattern,
            max_frame_bytes,
            watcher,
            mut events,
        } = *self;
        let folder = section.path.clone();
        tracing::info!(station = %station, folder = %folder.display(), "watching hot folder");
        let station = Arc::new(Station {
            id: station,
            section,
            pattern,
            pipeline,
            max_frame_bytes,
            taken: Arc::new(Mutex::new(HashSet::new())),
        });
        let (settled, recent) = existing_files(&folder);
        tasks.spawn(async move {
            // The watch lasts as long as the task.
            let _watcher = watcher;
            for path in settled {
                if shutdown.is_cancelled() {
                    return;
                }
                station.take(path).await;
            }
            let mut recheck = Box::pin(tokio::time::sleep(SETTLE));
            let mut recent = Some(recent);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    path = events.recv() => match path {
                        Some(path) => station.take(path).await,
                        None => return,
                    },
                    () = &mut recheck, if recent.is_some() => {
                        // Files that were new at start-up and have not changed since.
                        for path in recent.take().unwrap_or_default() {
                            if modified_before(&path, SETTLE) {
                                station.take(path).await;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// How long a file found at start-up must have been unchanged before it is taken without a
/// close event: it may still be being written.
const SETTLE: Duration = Duration::from_secs(1);

/// Files already in the folder at start-up, by name: those unchanged for [`SETTLE`], and the
/// recent ones, which are taken by their close event or once they have settled.
fn existing_files(folder: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return (Vec::new(), Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files.into_iter().partition(|p| modified_before(p, SETTLE))
}

/// Whether the file exists and was last modified more than `age` ago.
fn modified_before(path: &Path, age: Duration) -> bool {
    let Some(limit) = std::time::SystemTime::now().checked_sub(age) else {
        return false;
    };
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < limit)
}

impl Station {
    async fn take(&self, path: PathBuf) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return;
        };
        if is_temporary(&name) {
            return;
        }
        let Ok(metadata) = tokio::fs::metadata(&path).await else {
            // Gone already (moved on by the camera, or decided through an earlier event).
            return;
        };
        if !metadata.is_file() {
            return;
        }
        if let Ok(mut taken) = self.taken.lock()
            && !taken.insert(path.clone())
        {
            return;
        }
        let part = self.part_id(&name);
        let acquired_ms = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or_else(unix_ms);
        let bytes = if metadata.len() > self.max_frame_bytes {
            tracing::warn!(station = %self.id, file = %path.display(), bytes = metadata.len(), "frame file over agent.max_frame_bytes");
            Vec::new()
        } else {
            match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(station = %self.id, file = %path.display(), error = %Chain(&error), "cannot read frame file");
                    Vec::new()
                }
            }
        };
        if bytes.is_empty() {
            tracing::warn!(station = %self.id, file = %path.display(), reason = NoDecisionReason::UnreadableImage.name(), "empty or unreadable frame file");
        }
        let job = FrameJob {
            station: self.id.clone(),
            part,
            acquired_ms,
            bytes,
            completion: Some(self.completion(path)),
        };
        self.pipeline.submit(job);
    }

    /// The part id from the file name, or a generated one.
    fn part_id(&self, name: &str) -> u64 {
        let parsed = self
            .pattern
            .captures(name)
            .and_then(|c| c.name("part"))
            .and_then(|m| m.as_str().parse::<u64>().ok());
        match parsed {
            Some(part) => part,
            None => {
                let part = self.pipeline.generated_part_id();
                tracing::warn!(station = %self.id, file = name, part, "no part id in file name; generated one");
                part
            }
        }
    }

    /// Removes or moves the file once its outcome is logged.
    fn completion(&self, path: PathBuf) -> Completion {
        let after = self.section.after;
        let move_to = self.section.move_to.clone();
        let taken = Arc::clone(&self.taken);
        let station = self.id.clone();
        Box::new(move |_outcome, logged| {
            if logged {
                let result = match (after, &move_to) {
                    (AfterDecision::Move, Some(to)) => path
                        .file_name()
                        .map_or(Ok(()), |name| std::fs::rename(&path, to.join(name))),
                    _ => std::fs::remove_file(&path),
                };
                if let Err(error) = result {
                    tracing::warn!(station = %station, file = %path.display(), error = %Chain(&error), "cannot remove decided frame file");
                }
            }
            if let Ok(mut taken) = taken.lock() {
                taken.remove(&path);
            }
        })
    }
}

/// What happens to a frame file once its decision is in the result log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterDecision {
    /// Delete the file.
    Delete,
    /// Move the file into `move_to`.
    Move,
}

/// A camera's hot folder (`[station.hot_folder]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotFolderSection {
    /// The folder the camera writes frames into.
    pub path: PathBuf,
    /// Regular expression on the file name whose `part` group is the part id (digits);
    /// a name it does not match gets a generated part id.
    #[serde(default = "default_part_id_pattern")]
    pub part_id_pattern: String,
    /// `delete` or `move` the file once decided.
    #[serde(default = "default_after")]
    pub after: AfterDecision,
    /// Folder decided files are moved to, with `after = "move"`.
    #[serde(default)]
    pub move_to: Option<PathBuf>,
}

fn default_part_id_pattern() -> String {
    r"(?P<part>\d+)".to_owned()
}

const fn default_after() -> AfterDecision {
    AfterDecision::Delete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised() {
        for name in [
            ".frame.jpg",
            "frame.jpg.tmp",
            "f.part",
            "f.filepart",
            "f.jpg~",
        ] {
            assert!(is_temporary(name), "{name}");
        }
        for name in ["frame-000123.jpg", "part_7.png"] {
            assert!(!is_temporary(name), "{name}");
        }
    }
}
