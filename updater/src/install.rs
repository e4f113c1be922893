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

use crate::state::{
    BadVersion, DeferredVersion, ModelRef, StateError, StateFile, Trial, TrialPhase, UpdaterState,
};
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

/// Starts the trial of a staged bundle: records it durably, then makes it `current`. The model
/// floor is raised only when the trial commits ([`commit`]): a floor raised here named a
/// version that might never be installed (reverted, deferred, or the updater killed first),
/// and that version was skipped as already installed ever after.
pub fn start_trial(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    candidate: ModelRef,
    now_ms: u64,
    timeout_ms: u64,
) -> Result<(), InstallError> {
    state.trial = Some(Trial {
        candidate,
        restore_current: store.pointer(Pointer::Current)?,
        restore_previous: store.pointer(Pointer::Previous)?,
        started_ms: now_ms,
        deadline_ms: now_ms.saturating_add(timeout_ms),
        phase: TrialPhase::Running,
    });
    state_file.save(state)?;
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

/// Ends a trial successfully: raises the model floor to the candidate, then forgets the trial.
/// The floor is raised here, not when the trial starts: a version reverted (or deferred) never
/// became the floor, so `forget-bad` or a deferral's retry can install it again, while nothing
/// below what the box runs is ever chosen (the choice also takes the version `current` names).
/// A restart between the two steps commits again.
pub fn commit(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    trust: &TrustStore,
) -> Result<Option<ModelRef>, InstallError> {
    if let Some(trial) = &state.trial {
        let (_, evidence) = survey(store);
        let mut floor = trust.load_floor(&evidence)?.floor;
        floor.raise_model_version(&trial.candidate.model, trial.candidate.model_version);
        trust.save_floor(&floor)?;
    }
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
    end_trial(store, state_file, state, reason, None, now_ms)
}

/// Ends a trial the agent refused on latency alone: restores the old pointers like
/// [`revert`], but defers the candidate (tried again after a backoff that grows with each such
/// refusal) instead of marking it bad.
pub fn defer(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    reason: &str,
    now_ms: u64,
) -> Result<Option<ModelRef>, InstallError> {
    let Some(trial) = &state.trial else {
        return Ok(None);
    };
    let refusals = state
        .deferred
        .get(&trial.candidate.sha256)
        .map_or(0, |d| d.refusals)
        + 1;
    let retry_after_ms = now_ms.saturating_add(crate::state::latency_backoff_ms(refusals));
    end_trial(
        store,
        state_file,
        state,
        reason,
        Some(retry_after_ms),
        now_ms,
    )
}

/// Restores the old pointers and records the candidate as bad, or as deferred until
/// `retry_after_ms`; the decision is written before the pointers move.
fn end_trial(
    store: &Store,
    state_file: &StateFile,
    state: &mut UpdaterState,
    reason: &str,
    retry_after_ms: Option<u64>,
    now_ms: u64,
) -> Result<Option<ModelRef>, InstallError> {
    let Some(trial) = state.trial.as_mut() else {
        return Ok(None);
    };
    if trial.phase == TrialPhase::Running {
        trial.phase = TrialPhase::Reverting {
            reason: reason.to_owned(),
            retry_after_ms,
        };
    }
    let retry_after_ms = match &trial.phase {
        TrialPhase::Reverting { retry_after_ms, .. } => *retry_after_ms,
        TrialPhase::Running => None,
    };
    let candidate = trial.candidate.clone();
    match retry_after_ms {
        Some(retry_after_ms) => {
            let refusals = state
                .deferred
                .get(&candidate.sha256)
                .map_or(0, |d| d.refusals)
                + 1;
            state.deferred.insert(
                candidate.sha256.clone(),
                DeferredVersion {
                    model: candidate.model.clone(),
                    model_version: candidate.model_version,
                    reason: reason.to_owned(),
                    refusals,
                    retry_after_ms,
                },
            );
        }
        None => {
            state.deferred.remove(&candidate.sha256);
            state.bad.insert(
                candidate.sha256.clone(),
                BadVersion {
                    model: candidate.model.clone(),
                    model_version: candidate.model_version,
                    reason: reason.to_owned(),
                    at_ms: now_ms,
                },
            );
        }
    }
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
        TrialPhase::Reverting {
            reason,
            retry_after_ms,
        } => {
            end_trial(store, state_file, state, &reason, retry_after_ms, now_ms)?;
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
    fn the_model_floor_rises_when_a_trial_commits_never_when_it_starts_or_is_reverted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let sha = store.add(SHIPPED).expect("add");
        store.set_pointer(Pointer::Current, &sha).expect("current");
        let trust = TrustStore::open(&dir.path().join("state")).expect("trust");
        let state_file = StateFile::new(dir.path());
        let (current, _) = survey(&store);
        let current = current.expect("current bundle");
        let floor = || {
            let (_, evidence) = survey(&store);
            trust
                .load_floor(&evidence)
                .expect("floor")
                .floor
                .model_version(&current.model)
        };
        let before = floor();
        let candidate = ModelRef {
            model_version: current.model_version + 4,
            ..current.clone()
        };
        let mut state = UpdaterState::default();
        start_trial(
            &store,
            &state_file,
            &mut state,
            candidate.clone(),
            0,
            60_000,
        )
        .expect("start");
        assert_eq!(floor(), before, "raised when the trial started");
        revert(&store, &state_file, &mut state, "refused", 1).expect("revert");
        assert_eq!(floor(), before, "raised by a version that was reverted");
        start_trial(
            &store,
            &state_file,
            &mut state,
            candidate.clone(),
            2,
            60_000,
        )
        .expect("start again");
        commit(&store, &state_file, &mut state, &trust).expect("commit");
        assert_eq!(floor(), candidate.model_version);
    }

    #[test]
    fn a_trial_refused_on_latency_is_reverted_and_deferred_with_a_growing_wait_not_marked_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("store");
        let old = store.add(SHIPPED).expect("add");
        store.set_pointer(Pointer::Current, &old).expect("current");
        let state_file = StateFile::new(dir.path());
        let mut state = UpdaterState::default();
        let candidate = ModelRef {
            model: "surface-classifier".into(),
            model_version: 2,
            version: "2".into(),
            sha256: "c".repeat(64),
        };
        let trial = |state: &mut UpdaterState| {
            state.trial = Some(Trial {
                candidate: candidate.clone(),
                restore_current: Some(old.clone()),
                restore_previous: None,
                started_ms: 0,
                deadline_ms: 60_000,
                phase: TrialPhase::Running,
            });
        };
        trial(&mut state);
        let deferred = defer(&store, &state_file, &mut state, "over budget", 1_000)
            .expect("defer")
            .expect("a trial was running");
        assert_eq!(deferred, candidate);
        assert_eq!(
            store.pointer(Pointer::Current).expect("current"),
            Some(old.clone())
        );
        assert!(state.bad.is_empty(), "{:?}", state.bad);
        let first = state.deferred[&candidate.sha256].clone();
        assert_eq!(first.refusals, 1);
        assert_eq!(
            first.retry_after_ms,
            1_000 + crate::state::latency_backoff_ms(1)
        );

        trial(&mut state);
        defer(&store, &state_file, &mut state, "over budget", 2_000_000).expect("defer");
        let second = &state.deferred[&candidate.sha256];
        assert_eq!(second.refusals, 2);
        assert_eq!(
            second.retry_after_ms,
            2_000_000 + crate::state::latency_backoff_ms(2)
        );
        let (saved, problem) = state_file.load();
        assert!(problem.is_none());
        assert_eq!(saved.deferred, state.deferred, "the deferral is durable");

        // A later refusal that is not about latency marks it bad and ends the deferral.
        trial(&mut state);
        revert(
            &store,
            &state_file,
            &mut state,
            "golden mismatch",
            3_000_000,
        )
        .expect("revert");
        assert!(state.bad.contains_key(&candidate.sha256));
        assert!(state.deferred.is_empty());
    }
}
