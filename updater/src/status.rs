//! What the updater is doing, for people and for the line's monitoring.
//!
//! This module owns the [`Status`] document and where it goes: `<state_dir>/status.json`
//! (read by `model-updater status`) and, when MQTT is configured, the retained
//! `<prefix>/updater` topic. The document is replaced as a whole on every change. Next to it
//! the board keeps the [`Activity`] counters of this process (checks by outcome, bytes
//! downloaded), which the metrics report and the document does not carry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use defect_shared::error_chain::Chain;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::json_file::JsonFileError;
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
    /// A new bundle runs in shadow beside `current`, earning its promotion.
    Canary,
    /// A new bundle is `current` and the agent's verdict is awaited.
    Trial,
    /// The last check failed loudly (see `last_error`).
    Error,
    /// The repository could not be reached at the last check.
    Offline,
    /// The updater stopped (retained as its MQTT Last Will too).
    Stopped,
}

impl Phase {
    /// Every phase, in declaration order.
    pub const ALL: [Phase; 9] = [
        Phase::Idle,
        Phase::Checking,
        Phase::Downloading,
        Phase::Installing,
        Phase::Canary,
        Phase::Trial,
        Phase::Error,
        Phase::Offline,
        Phase::Stopped,
    ];

    /// snake_case name, as in the status document and the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Checking => "checking",
            Phase::Downloading => "downloading",
            Phase::Installing => "installing",
            Phase::Canary => "canary",
            Phase::Trial => "trial",
            Phase::Error => "error",
            Phase::Offline => "offline",
            Phase::Stopped => "stopped",
        }
    }
}

/// How a finished check (one update cycle) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Nothing newer for this box.
    UpToDate,
    /// A new bundle was installed and committed.
    Installed,
    /// A new bundle failed its trial and was reverted.
    Reverted,
    /// The repository could not be reached.
    Offline,
    /// The check failed loudly (verification, download, install).
    Error,
}

impl CheckOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [CheckOutcome; 5] = [
        CheckOutcome::UpToDate,
        CheckOutcome::Installed,
        CheckOutcome::Reverted,
        CheckOutcome::Offline,
        CheckOutcome::Error,
    ];

    /// snake_case name, as in the metrics.
    pub const fn name(self) -> &'static str {
        match self {
            CheckOutcome::UpToDate => "up_to_date",
            CheckOutcome::Installed => "installed",
            CheckOutcome::Reverted => "reverted",
            CheckOutcome::Offline => "offline",
            CheckOutcome::Error => "error",
        }
    }
}

/// What this process did since it started: counters, never persisted.
#[derive(Debug, Default)]
pub struct Activity {
    /// Finished checks, indexed like [`CheckOutcome::ALL`].
    checks: [AtomicU64; CheckOutcome::ALL.len()],
    /// Bundle bytes received from the repository.
    downloaded_bytes: AtomicU64,
}

impl Activity {
    /// Counts a finished check.
    pub fn count_check(&self, outcome: CheckOutcome) {
        self.checks[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Finished checks that ended with `outcome`.
    pub fn checks(&self, outcome: CheckOutcome) -> u64 {
        self.checks[outcome as usize].load(Ordering::Relaxed)
    }

    /// The counter of bundle bytes received, for the downloader to add to.
    pub fn downloaded_bytes(&self) -> &AtomicU64 {
        &self.downloaded_bytes
    }
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
    /// Versions refused on latency alone, tried again later (SHA-256, when, and reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
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
            deferred: Vec::new(),
            at_ms: 0,
        }
    }
}

/// Path of the status file in a state folder.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Reads the status file of a state folder.
pub fn read(state_dir: &Path) -> Result<Option<Status>, JsonFileError> {
    crate::json_file::read(&status_path(state_dir))
}

/// Holds the status and publishes every change to the file and to watchers (the MQTT link,
/// the metrics); also holds the process's [`Activity`] counters.
#[derive(Debug)]
pub struct StatusBoard {
    path: PathBuf,
    sender: watch::Sender<Status>,
    activity: Activity,
}

impl StatusBoard {
    /// A board writing to `<state_dir>/status.json`.
    pub fn new(state_dir: &Path) -> StatusBoard {
        let (sender, _) = watch::channel(Status::default());
        StatusBoard {
            path: status_path(state_dir),
            sender,
            activity: Activity::default(),
        }
    }

    /// What this process did since it started.
    pub fn activity(&self) -> &Activity {
        &self.activity
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
                if let Err(error) = defect_shared::atomic::write(&self.path, &bytes) {
                    tracing::warn!(path = %self.path.display(), error = %Chain(&error), "cannot write the status file");
                }
            }
            Err(error) => tracing::warn!(error = %Chain(&error), "cannot serialise the status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_outcome_is_counted_apart() {
        let activity = Activity::default();
        for (index, outcome) in CheckOutcome::ALL.into_iter().enumerate() {
            for _ in 0..=index {
                activity.count_check(outcome);
            }
        }
        let counts: Vec<u64> = CheckOutcome::ALL.map(|o| activity.checks(o)).to_vec();
        assert_eq!(counts, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn phase_names_are_the_status_document_names() {
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).expect("serialise");
            assert_eq!(json, format!("\"{}\"", phase.name()));
        }
    }
}
