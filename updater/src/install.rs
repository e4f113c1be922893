//! Putting a verified bundle into the model store and switching to it, or back.
//!
//! This module owns the store side of an update: checking the downloaded bytes are the bundle
//! the signed target describes, adding them to the content-addressed store, switching
//! `current`/`previous` (each switch a `rename(2)` of a symlink, fsynced) with the trial
//! recorded *before* the switch, restoring the old pointers on revert, and garbage-collecting
//! bundles nothing points to. `current`, `previous`, `factory` and the bundle on trial are
//! always kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use defect_models::store::{Pointer, Store, StoreError};
use defect_models::{Bundle, BundleError};
use defect_shared::error_chain::Chain;

use crate::state::{BadVersion, ModelRef, StateError, StateFile, Trial, TrialPhase, UpdaterState};
use crate::trust::{TrustError, TrustStore};
use crate::verify::Release;

/// Why an install step failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The downloaded bytes are not a valid bundle.
    #[error("target {target}: not a valid bundle")]
    NotABundle {
        /// The target name.
        target: String,
        /// Why.
        #[source]
        source: BundleError,
    },
    /// The bundle is valid but not what its signed target entry says.
    #[error("target {target}: the bundle is {found}, but its signed entry says {signed}")]
    Mismatch {
        /// The target name.
        target: String,
        /// What the bundle's manifest says.
        found: String,
        /// What the signed entry says.
        signed: String,
    },
    /// The model store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The updater state could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The trust state could not be written.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Describes a bundle.
pub fn model_ref(bundle: &Bundle) -> ModelRef {
    let manifest = bundle.manifest();
    ModelRef {
        model: manifest.name.clone(),
        model_version: manifest.model_version,
        version: manifest.version.clone(),
        sha256: bundle.digest().to_owned(),
    }
}

/// What the store holds now: the bundle `current` names, and the highest model version per
/// model among `current`, `previous` and `factory` (evidence for a damaged floor).
pub fn survey(store: &Store) -> (Option<ModelRef>, BTreeMap<String, u64>) {
    let mut evidence = BTreeMap::new();
    let mut current = None;
    for pointer in [Pointer::Current, Pointer::Previous, Pointer::Factory] {
        match store.load(pointer) {
            Ok(Some(bundle)) => {
                let found = model_ref(&bundle);
                let entry = evidence.entry(found.model.clone()).or_insert(0);
                *entry = (*entry).max(found.model_version);
                if pointer == Pointer::Current {
                    current = Some(found);
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(pointer = pointer.file_name(), error = %Chain(&error), "model store pointer unreadable")
            }
        }
    }
    (current, evidence)
}

/// Checks downloaded bytes against their signed release and adds them to the store.
pub fn stage(store: &Store, bytes: Vec<u8>, release: &Release) -> Result<ModelRef, InstallError> {
    let bundle = Bundle::from_bytes(bytes).map_err(|source| InstallError::NotABundle {
        target: release.target.clone(),
        source,
    })?;
    let found = model_ref(&bundle);
    if found.model != release.model || found.model_version != release.model_version {
        return Err(InstallError::Mismatch {
            target: release.target.clone(),
            found: format!("{} model_version {}", found.model, found.model_version),
            signed: format!("{} model_version {}", release.model, release.model_version),
        });
    }
    let sha = store.add(bundle.bytes())?;
    debug_assert_eq!(sha, found.sha256);
    Ok(found)
}

/// Starts the trial of a staged bundle: records it, then raises the model floor, both durably,
/// then makes it `current`.
///
/// The trial is recorded first: a crash between the two writes leaves a recorded trial that
/// the next start resumes (the floor follows from the store once the bundle is `current`).
/// The other order left a floor naming a version that was never installed, and that version
/// was skipped as already installed ever after.
pub fn start_trial(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    trust: &TrustStore,
    candidate: ModelRef,
    now_ms: u64,
    timeout_ms: u64,
) -> Result<(), InstallError> {
    let (model, model_version) = (candidate.model.clone(), candidate.model_version);
    state.trial = Some(Trial {
        candidate,
        restore_current: store.pointer(Pointer::Current)?,
        restore_previous: store.pointer(Pointer::Previous)?,
        started_ms: now_ms,
        deadline_ms: now_ms.saturating_add(timeout_ms),
        phase: TrialPhase::Running,
    });
    state_file.save(state)?;
    let (_, evidence) = survey(store);
    let mut floor = trust.load_floor(&evidence)?.floor;
    floor.raise_model_version(&model, model_version);
    trust.save_floor(&floor)?;
    apply_trial(store, state)
}

/// Makes the trial's bundle `current` (idempotent; used again after a restart).
pub fn apply_trial(store: &Store, state: &UpdaterState) -> Result<(), InstallError> {
    let Some(trial) = &state.trial else {
        return Ok(());
    };
    if store.pointer(Pointer::Current)?.as_deref() == Some(trial.candidate.sha256.as_str()) {
        return Ok(());
    }
    if let Some(old) = &trial.restore_current {
        store.set_pointer(Pointer::Previous, old)?;
    }
    store.set_pointer(Pointer::Current, &trial.candidate.sha256)?;
    Ok(())
}

/// Ends a trial successfully.
pub fn commit(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
) -> Result<Option<ModelRef>, InstallError> {
    let committed = state.trial.take().map(|t| t.candidate);
    state_file.save(state)?;
    collect_garbage(store, state);
    Ok(committed)
}

/// Ends a trial by restoring the old pointers and marking the candidate bad, durably: the
/// decision is recorded first, so a restart finishes an interrupted revert.
pub fn revert(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    reason: &str,
    now_ms: u64,
) -> Result<Option<ModelRef>, InstallError> {
    let Some(trial) = state.trial.as_mut() else {
        return Ok(None);
    };
    if trial.phase == TrialPhase::Running {
        trial.phase = TrialPhase::Reverting {
            reason: reason.to_owned(),
        };
    }
    let candidate = trial.candidate.clone();
    state.bad.insert(
        candidate.sha256.clone(),
        BadVersion {
            model: candidate.model.clone(),
            model_version: candidate.model_version,
            reason: reason.to_owned(),
            at_ms: now_ms,
        },
    );
    state_file.save(state)?;
    finish_revert(store, state)?;
    state.trial = None;
    state_file.save(state)?;
    collect_garbage(store, state);
    Ok(Some(candidate))
}

/// Restores the pointers a trial recorded (idempotent).
fn finish_revert(store: &Store, state: &UpdaterState) -> Result<(), InstallError> {
    let Some(trial) = &state.trial else {
        return Ok(());
    };
    let restore = trial
        .restore_current
        .clone()
        .or(store.pointer(Pointer::Factory)?);
    if let Some(sha) = &restore
        && store.pointer(Pointer::Current)?.as_deref() != Some(sha.as_str())
    {
        store.set_pointer(Pointer::Current, sha)?;
    }
    if let Some(previous) = &trial.restore_previous {
        if store.bundle_path(previous).is_file() {
            store.set_pointer(Pointer::Previous, previous)?;
        }
    } else if let Some(sha) = &restore {
        store.set_pointer(Pointer::Previous, sha)?;
    }
    Ok(())
}

/// Finishes what a restart finds in the state: an interrupted revert is completed, an
/// interrupted start is applied. Returns the reason of a completed revert.
pub fn recover(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    now_ms: u64,
) -> Result<Option<String>, InstallError> {
    let Some(trial) = &state.trial else {
        return Ok(None);
    };
    match trial.phase.clone() {
        TrialPhase::Reverting { reason } => {
            revert(store, state_file, state, &reason, now_ms)?;
            Ok(Some(reason))
        }
        TrialPhase::Running => {
            apply_trial(store, state)?;
            Ok(None)
        }
    }
}

/// Removes bundles nothing points to, and leftovers of interrupted writes. Returns how many
/// files were removed.
pub fn collect_garbage(store: &Store, state: &UpdaterState) -> usize {
    let mut keep = BTreeSet::new();
    for pointer in [
        Pointer::Current,
        Pointer::Previous,
        Pointer::Factory,
        Pointer::Candidate,
    ] {
        if let Ok(Some(sha)) = store.pointer(pointer) {
            keep.insert(format!("{sha}.dmb"));
        }
    }
    if let Some(trial) = &state.trial {
        keep.insert(format!("{}.dmb", trial.candidate.sha256));
        for sha in [&trial.restore_current, &trial.restore_previous]
            .into_iter()
            .flatten()
        {
            keep.insert(format!("{sha}.dmb"));
        }
    }
    let mut removed = 0;
    for sub in ["bundles", "staging"] {
        let dir = store.root().join(sub);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if sub == "bundles" && keep.contains(&name) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(file = %entry.path().display(), "removed from the model store");
                }
                Err(error) => {
                    tracing::warn!(file = %entry.path().display(), error = %Chain(&error), "cannot remove")
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &[u8] = include_bytes!("../../models/shipped/surface-classifier.dmb");

    #[test]
    fn a_trial_that_could_not_be_recorded_leaves_the_model_floor_where_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let sha = store.add(SHIPPED).expect("add");
        store.set_pointer(Pointer::Current, &sha).expect("current");
        let trust = TrustStore::open(&dir.path().join("state")).expect("trust");
        let (current, evidence) = survey(&store);
        let current = current.expect("current bundle");
        let before = trust
            .load_floor(&evidence)
            .expect("floor")
            .floor
            .model_version(&current.model);
        // The state file's folder does not exist: recording the trial fails, as it would if
        // the updater died before the write.
        let state_file = StateFile::new(&dir.path().join("missing"));
        let mut state = UpdaterState::default();
        let candidate = ModelRef {
            model_version: current.model_version + 4,
            ..current.clone()
        };
        let started = start_trial(
            &store,
            &state_file,
            &mut state,
            &trust,
            candidate,
            0,
            60_000,
        );
        assert!(started.is_err(), "the trial was recorded");
        let after = trust
            .load_floor(&evidence)
            .expect("floor")
            .floor
            .model_version(&current.model);
        assert_eq!(
            after, before,
            "the floor names a model_version that was never installed"
        );
    }
}
