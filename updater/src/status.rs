//! What the updater is doing, for people and for the line's monitoring.
//!
//! This module owns the [`Status`] document and where it goes: `<state_dir>/status.json`
//! (read by `model-updater status`) and, when MQTT is configured, the retained
//! `<prefix>/updater` topic. The document is replaced as a whole on every change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::ModelRef;

/// The updater's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the next check.
    Idle,
    /// Fetching and verifying metadata.
    Checking,
    /// Downloading a bundle.
    Downloading,
    /// Writing a bundle into the store and switching pointers.
    Installing,
    /// A new bundle is `current` and the agent's verdict is awaited.
    Trial,
    /// The last check failed loudly (see `last_error`).
    Error,
    /// The repository could not be reached at the last check.
    Offline,
    /// The updater stopped (retained as its MQTT Last Will too).
    Stopped,
}

/// The status document (JSON on disk and on MQTT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Format version.
    pub v: u32,
    /// Phase.
    pub state: Phase,
    /// The bundle `current` names.
    pub current: Option<ModelRef>,
    /// The version being downloaded, installed or tried.
    pub pending: Option<ModelRef>,
    /// End of the last check (Unix ms).
    pub last_check_ms: Option<u64>,
    /// End of the last check that reached and verified the repository (Unix ms).
    pub last_success_ms: Option<u64>,
    /// The last loud error, cleared by the next successful check.
    pub last_error: Option<String>,
    /// Set while the clock is known to have stepped back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_warning: Option<String>,
    /// Versions marked bad on this box (SHA-256 and reason).
    #[serde(default)]
    pub bad: Vec<String>,
    /// Last change (Unix ms).
    pub at_ms: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            v: 1,
            state: Phase::Idle,
            current: None,
            pending: None,
            last_check_ms: None,
            last_success_ms: None,
            last_error: None,
            clock_warning: None,
            bad: Vec::new(),
            at_ms: 0,
        }
    }
}

/// Path of the status file in a state folder.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Reads the status file of a state folder.
pub fn read(state_dir: &Path) -> Result<Option<Status>, String> {
    let path = status_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Holds the status and publishes every change to the file and to watchers (the MQTT link).
#[derive(Debug)]
pub struct StatusBoard {
    path: PathBuf,
    sender: watch::Sender<Status>,
}

impl StatusBoard {
    /// A board writing to `<state_dir>/status.json`.
    pub fn new(state_dir: &Path) -> StatusBoard {
        let (sender, _) = watch::channel(Status::default());
        StatusBoard {
            path: status_path(state_dir),
            sender,
        }
    }

    /// A receiver of every change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.sender.subscribe()
    }

    /// The status now.
    pub fn get(&self) -> Status {
        self.sender.borrow().clone()
    }

    /// Changes the status and publishes it.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        self.sender.send_modify(|status| {
            change(status);
            status.at_ms = crate::clock::now_ms();
        });
        let status = self.get();
        match serde_json::to_vec_pretty(&status) {
            Ok(bytes) => {
                if let Err(error) = defect_models::atomic::write(&self.path, &bytes) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot write the status file");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot serialise the status"),
        }
    }
}
