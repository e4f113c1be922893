//! The hot folder a camera (or its FTP upload) writes frames into.
//!
//! This module owns picking up complete files only: a file is taken when it is closed after
//! writing or renamed into the folder (inotify through `notify`), never while it is written;
//! temporary names (`.name`, `*.tmp`, `*.part`, `*.partial`, `*.filepart`, `*~`) are ignored
//! until renamed. It derives the part id from the file name with the station's pattern, and
//! removes or moves the file only once its outcome is in the result log. Files already in the
//! folder at start-up are decided too, oldest name first.
//!
//! # After a crash
//!
//! Each file's identity (station, name, content SHA-256) is logged with its outcome, and each
//! file in flight has a marker (`in_flight`). A file found at start-up whose outcome is already
//! logged is completed without a second decision (its outcome goes out on `results` from the
//! log, under its one seq). A file the agent died with in flight is decided again; one it died
//! with in flight twice is moved to the quarantine folder and gets "no decision" (`why` 8,
//! quarantined), so a frame that crashes the agent cannot keep the line down.

use defect_shared::error_chain::Chain;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FrameSource;
use super::in_flight::{Attempt, InFlight, InFlightError};
use crate::outcome::{NoDecisionReason, unix_ms};
use crate::pipeline::{Completion, FrameJob, Pipeline};
use crate::result_log::{FrameIdentity, ResultLog};

/// Why a hot folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum HotFolderError {
    /// The folder does not exist or cannot be read.
    #[error("hot folder {path}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// inotify refused the watch.
    #[error("cannot watch hot folder {path}")]
    Watch {
        /// The folder.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The in-flight record or the quarantine folder cannot be made.
    #[error("station {station}: cannot keep frames in flight")]
    InFlight {
        /// The station.
        station: String,
        /// What failed.
        source: InFlightError,
    },
    /// The part id pattern does not compile (validated earlier; kept for safety).
    #[error("station {station}: part_id_pattern")]
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
    log: ResultLog,
    in_flight: InFlight,
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
    /// Where a file's outcome is logged with its identity.
    log: ResultLog,
    /// The markers of the files in flight, and the quarantine folder.
    in_flight: InFlight,
}

impl HotFolder {
    /// Watches the station's hot folder (from now on, so no file closed before the start is
    /// missed); frames are delivered once the source is started. Files in flight are recorded
    /// under `state_dir`, and their outcomes logged with their identity in `log`.
    pub fn open(
        station: &str,
        section: &HotFolderSection,
        max_frame_bytes: u64,
        log: ResultLog,
        state_dir: &Path,
    ) -> Result<HotFolder, HotFolderError> {
        let in_flight =
            InFlight::open(state_dir, station).map_err(|source| HotFolderError::InFlight {
                station: station.to_owned(),
                source,
            })?;
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
            log,
            in_flight,
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
            log,
            in_flight,
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
            log,
            in_flight,
        });
        station.forget_gone(&folder);
        let (settled, recent) = existing_files(&folder);
        // Files the agent died with in flight go first and one at a time: if one of them
        // kills the agent again, the others are not in flight with it.
        let (suspects, settled): (Vec<_>, Vec<_>) = settled.into_iter().partition(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| station.in_flight.is_suspect(name))
        });
        tasks.spawn(async move {
            // The watch lasts as long as the task.
            let _watcher = watcher;
            for path in suspects {
                if shutdown.is_cancelled() {
                    return;
                }
                let (done, completed) = oneshot::channel();
                station.take_notifying(path, Some(done)).await;
                // Resolves when the file is completed, or was not taken after all.
                let _ = completed.await;
            }
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

/// `completion`, then a signal on `done` when there is one.
fn signalling(completion: Completion, done: Option<oneshot::Sender<()>>) -> Completion {
    match done {
        None => completion,
        Some(done) => Box::new(move |outcome, logged| {
            completion(outcome, logged);
            let _ = done.send(());
        }),
    }
}

impl Station {
    async fn take(&self, path: PathBuf) {
        self.take_notifying(path, None).await;
    }

    /// Takes the file at `path`. `done` is signalled once the file is completed; it is dropped
    /// unsignalled when the file is not taken (gone, temporary, already taken).
    async fn take_notifying(&self, path: PathBuf, mut done: Option<oneshot::Sender<()>>) {
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
        let identity = FrameIdentity {
            station: self.id.clone(),
            file: name.clone(),
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        match self.log.logged_frame(&identity) {
            Ok(Some(seq)) => {
                tracing::info!(station = %self.id, file = %path.display(), seq, "this file's outcome was logged before the agent stopped; completing the file without a second decision");
                self.completer().complete(&path, &identity, true);
                return;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(station = %self.id, file = %path.display(), error = %Chain(&error), "cannot look the file up in the result log; deciding it");
            }
        }
        match self.in_flight.begin(&name, &identity.sha256) {
            Ok(Attempt::First) => {}
            Ok(Attempt::Again { deaths }) => {
                tracing::warn!(station = %self.id, file = %path.display(), deaths, "the agent died while this frame was in flight; deciding it again");
            }
            Ok(Attempt::Quarantine { deaths }) => {
                match self.quarantine(&path, &name, part, acquired_ms, deaths, done) {
                    None => return,
                    Some(back) => done = back,
                }
            }
            Err(error) => {
                tracing::warn!(station = %self.id, file = %path.display(), error = %Chain(&error), "cannot record the frame in flight; deciding it");
            }
        }
        let job = FrameJob {
            station: self.id.clone(),
            part,
            acquired_ms,
            bytes,
            completion: Some(signalling(self.completion(path, identity.clone()), done)),
            identity: Some(identity),
        };
        self.pipeline.submit(job);
    }

    /// Moves a file the agent died with in flight `deaths` times to the quarantine folder, and
    /// gives its part "no decision". When it cannot be moved (it is decided again), gives
    /// `done` back.
    fn quarantine(
        &self,
        path: &Path,
        name: &str,
        part: u64,
        acquired_ms: u64,
        deaths: u32,
        done: Option<oneshot::Sender<()>>,
    ) -> Option<Option<oneshot::Sender<()>>> {
        let to = match self.in_flight.quarantine(path, name) {
            Ok(to) => to,
            Err(error) => {
                tracing::error!(station = %self.id, file = %path.display(), error = %Chain(&error), "cannot quarantine a frame the agent died with twice; deciding it again");
                return Some(done);
            }
        };
        let detail = format!(
            "the agent died {deaths} times while deciding {name}; moved to {}",
            to.display()
        );
        tracing::error!(station = %self.id, part, file = %to.display(), deaths, "frame quarantined: the agent died each time it was in flight; it gets no decision");
        let in_flight = self.in_flight.clone();
        let taken = Arc::clone(&self.taken);
        let (name, path) = (name.to_owned(), path.to_owned());
        let job = FrameJob {
            station: self.id.clone(),
            part,
            acquired_ms,
            bytes: Vec::new(),
            completion: Some(signalling(
                Box::new(move |_outcome, _logged| {
                    in_flight.end(&name);
                    if let Ok(mut taken) = taken.lock() {
                        taken.remove(&path);
                    }
                }),
                done,
            )),
            identity: None,
        };
        self.pipeline
            .submit_no_decision(job, NoDecisionReason::Quarantined, detail);
        None
    }

    /// Forgets the records of files that left the folder while the agent was down, or just
    /// before it died.
    fn forget_gone(&self, folder: &Path) {
        let gone = |name: &str| !folder.join(name).exists();
        let markers = self.in_flight.forget_gone(gone);
        let logged = self.log.forget_frames_of(&self.id, gone).unwrap_or_else(|error| {
            tracing::warn!(station = %self.id, error = %Chain(&error), "cannot forget completed files in the result log");
            0
        });
        if markers + logged > 0 {
            tracing::debug!(station = %self.id, markers, logged, "forgot the records of files no longer in the hot folder");
        }
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

    /// What completes this station's files.
    fn completer(&self) -> Completer {
        Completer {
            after: self.section.after,
            move_to: self.section.move_to.clone(),
            taken: Arc::clone(&self.taken),
            station: self.id.clone(),
            log: self.log.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// The completion of a frame read from `path`: the file is completed once its outcome is
    /// logged.
    fn completion(&self, path: PathBuf, identity: FrameIdentity) -> Completion {
        let completer = self.completer();
        Box::new(move |_outcome, logged| completer.complete(&path, &identity, logged))
    }
}

/// Completes a station's frame files once their outcome is logged.
struct Completer {
    after: AfterDecision,
    move_to: Option<PathBuf>,
    taken: Arc<Mutex<HashSet<PathBuf>>>,
    station: String,
    log: ResultLog,
    in_flight: InFlight,
}

impl Completer {
    /// Removes or moves the file when its outcome was `logged`, then forgets its identity in
    /// the result log and its in-flight marker.
    fn complete(&self, path: &Path, identity: &FrameIdentity, logged: bool) {
        if logged {
            let result = match (self.after, &self.move_to) {
                (AfterDecision::Move, Some(to)) => path
                    .file_name()
                    .map_or(Ok(()), |name| std::fs::rename(path, to.join(name))),
                _ => std::fs::remove_file(path),
            };
            match result {
                Ok(()) => {
                    if let Err(error) = self.log.forget_frame(identity) {
                        tracing::warn!(station = %self.station, file = %path.display(), error = %Chain(&error), "cannot forget the completed file in the result log");
                    }
                }
                Err(error) => {
                    tracing::warn!(station = %self.station, file = %path.display(), error = %Chain(&error), "cannot remove decided frame file");
                }
            }
        }
        self.in_flight.end(&identity.file);
        if let Ok(mut taken) = self.taken.lock() {
            taken.remove(path);
        }
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
