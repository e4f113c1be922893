//! The updater's own crash-safe state: the bundle on trial and the versions marked bad.
//!
//! This module owns `<state_dir>/updater-state.json`. It is written ahead of every pointer
//! switch (write-ahead), so a restart after `kill -9` or a power cut at any instant knows whether
//! a trial was being started, was running, or was being reverted, and finishes the job. The
//! bad list is never pruned: a version that failed on this box is never installed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::json_file::JsonFileError;

/// A model version, as status and state name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Model name.
    pub model: String,
    /// Integer model version.
    pub model_version: u64,
    /// Human-readable version.
    pub version: String,
    /// Bundle SHA-256.
    pub sha256: String,
}

/// Where a trial stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum TrialPhase {
    /// The bundle is being made `current` (or is, and the agent's verdict is awaited).
    Running,
    /// The bundle failed; the old pointers are being restored.
    Reverting {
        /// Why it failed.
        reason: String,
        /// Set when it failed on latency alone: it is deferred (tried again after this
        /// instant, Unix ms) rather than marked bad.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// A bundle on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The bundle on trial.
    pub candidate: ModelRef,
    /// What `current` named before (restored on revert).
    pub restore_current: Option<String>,
    /// What `previous` named before (restored on revert).
    pub restore_previous: Option<String>,
    /// When the trial started (Unix ms).
    pub started_ms: u64,
    /// When the trial fails without a verdict (Unix ms).
    pub deadline_ms: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub phase: TrialPhase,
}

/// A bundle running in shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRun {
    /// The candidate (staged in the store, named by its `candidate` pointer).
    pub candidate: ModelRef,
    /// When its shadow run started (Unix ms).
    pub since_ms: u64,
    /// The policy it runs under (the box's default with its target's overrides).
    pub policy: crate::canary::CanaryPolicy,
}

/// A version that failed on this box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadVersion {
    /// Model name.
    pub model: String,
    /// Integer model version.
    pub model_version: u64,
    /// Why it was marked bad.
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// A version the agent refused on latency alone, to be tried again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredVersion {
    /// Model name.
    pub model: String,
    /// Integer model version.
    pub model_version: u64,
    /// Why it was deferred (the agent's latency measurement).
    pub reason: String,
    /// How many times it was refused on latency.
    pub refusals: u32,
    /// Not tried again before this instant (Unix ms).
    pub retry_after_ms: u64,
}

/// The wait before a version refused on latency alone `refusals` times is tried again:
/// 10 minutes, doubling with each refusal, at most a day.
pub fn latency_backoff_ms(refusals: u32) -> u64 {
    const FIRST_MS: u64 = 10 * 60 * 1000;
    const MOST_MS: u64 = 24 * 60 * 60 * 1000;
    let doublings = refusals.saturating_sub(1).min(16);
    FIRST_MS.saturating_mul(1 << doublings).min(MOST_MS)
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdaterState {
    /// Format version.
    pub v: u32,
    /// The bundle on trial, if any.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The bundle running in shadow as the store's `candidate`, if any.
    #[serde(default)]
    pub canary: Option<CanaryRun>,
    /// Versions never to install again, by bundle SHA-256.
    #[serde(default)]
    pub bad: BTreeMap<String, BadVersion>,
    /// Versions refused on latency alone, tried again after a backoff, by bundle SHA-256.
    #[serde(default)]
    pub deferred: BTreeMap<String, DeferredVersion>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be written.
    #[error("updater state {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The state file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file in `state_dir`.
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join("updater-state.json"),
        }
    }

    /// Reads the state. A missing file is the empty state; a damaged one is reported (the
    /// returned error) and replaced by the empty state.
    pub fn load(&self) -> (UpdaterState, Option<JsonFileError>) {
        match crate::json_file::read(&self.path) {
            Ok(state) => (state.unwrap_or_default(), None),
            Err(error) => (UpdaterState::default(), Some(error)),
        }
    }

    /// Persists the state atomically and durably.
    pub fn save(&self, state: &UpdaterState) -> Result<(), StateError> {
        let mut state = state.clone();
        state.v = 1;
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StateError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        defect_shared::atomic::write(&self.path, &bytes).map_err(|source| StateError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_refused_on_latency_waits_10_minutes_doubling_to_a_day() {
        const MIN: u64 = 60 * 1000;
        assert_eq!(latency_backoff_ms(1), 10 * MIN);
        assert_eq!(latency_backoff_ms(2), 20 * MIN);
        assert_eq!(latency_backoff_ms(4), 80 * MIN);
        assert_eq!(latency_backoff_ms(9), 24 * 60 * MIN);
        assert_eq!(latency_backoff_ms(u32::MAX), 24 * 60 * MIN);
    }

    #[test]
    fn a_trial_round_trips_and_a_torn_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path());
        let (empty, problem) = file.load();
        assert_eq!(empty, UpdaterState::default());
        assert!(problem.is_none());
        let state = UpdaterState {
            v: 1,
            canary: None,
            trial: Some(Trial {
                candidate: ModelRef {
                    model: "m".into(),
                    model_version: 2,
                    version: "2.0".into(),
                    sha256: "ab".into(),
                },
                restore_current: Some("cd".into()),
                restore_previous: None,
                started_ms: 1,
                deadline_ms: 2,
                phase: TrialPhase::Reverting {
                    retry_after_ms: Some(9),
                    reason: "refused".into(),
                },
            }),
            bad: BTreeMap::new(),
            deferred: BTreeMap::new(),
        };
        file.save(&state).expect("save");
        let (loaded, problem) = file.load();
        assert_eq!(loaded, state);
        assert!(problem.is_none());
        std::fs::write(dir.path().join("updater-state.json"), b"{\"tri").expect("tear");
        assert!(file.load().1.is_some());
    }
}
