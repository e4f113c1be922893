//! One update cycle and the daemon loop around it.
//!
//! This module owns the order of an update: finish whatever a restart interrupted, verify the
//! repository, choose a release, check free space, download (resumable), stage it into the
//! store, start the trial, and commit or revert on the agent's verdict. Every durable step is
//! recorded before the next begins, so `kill -9` at any instant leaves `current` naming a
//! complete, verified bundle and the next start finishes the job. The daemon loop runs a cycle
//! on an interval with jitter, or at once when an update is announced over MQTT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use defect_models::store::{Pointer, Store, StoreError};
use defect_shared::error_chain::{self, Chain};
use defect_shared::metrics_listener::{BindError, MetricsListener};
use rand::Rng;
use tokio::sync::Notify;

use crate::canary::Judgement;
use crate::clock;
use crate::config::Config;
use crate::download::{self, DownloadError};
use crate::install::{self, InstallError};
use crate::select;
use crate::state::{CanaryRun, ModelRef, StateFile, UpdaterState};
use crate::status::{CheckOutcome, Phase, StatusBoard};
use crate::trial::{self, Verdict};
use crate::trust::{TrustError, TrustStore};
use crate::verify::{self, CheckError, Release, Source};

/// How a cycle ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing newer for this box.
    UpToDate,
    /// A new bundle serves and was committed.
    Installed(ModelRef),
    /// A new bundle failed its trial and was reverted: marked bad, or deferred when the agent
    /// refused it on latency alone (the reason says which).
    Reverted {
        /// The bundle that failed.
        candidate: ModelRef,
        /// Why.
        reason: String,
    },
}

/// Why a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The repository check failed.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The download failed.
    #[error("download of {target}")]
    Download {
        /// The target.
        target: String,
        /// What failed.
        source: Box<DownloadError>,
    },
    /// Staging or switching failed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The model store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The trust state could not be opened.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A local folder could not be created or read.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] BindError),
    /// A file of `[mqtt.tls]` could not be read.
    #[error("[mqtt.tls]")]
    MqttTls(#[from] defect_shared::mqtt_tls::TlsFileError),
}

impl UpdateError {
    /// Whether this is the quiet "no connectivity" kind.
    pub fn is_offline(&self) -> bool {
        match self {
            UpdateError::Check(e) => e.is_offline(),
            UpdateError::Download { source, .. } => source.is_offline(),
            _ => false,
        }
    }
}

/// The updater of one box.
#[derive(Debug)]
pub struct Updater {
    config: Config,
    store: Store,
    trust: TrustStore,
    state_file: StateFile,
    state: UpdaterState,
    client: reqwest::Client,
    board: Arc<StatusBoard>,
}

impl Updater {
    /// Opens the state, the trust record and the store, and finishes what a restart
    /// interrupted (a revert in progress is completed; a trial in progress is resumed by the
    /// next cycle).
    pub fn open(config: Config) -> Result<Updater, UpdateError> {
        let state_dir = config.paths.state_dir.clone();
        for dir in [state_dir.clone(), state_dir.join("downloads")] {
            std::fs::create_dir_all(&dir).map_err(|source| UpdateError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let store = Store::open(&config.paths.model_store)?;
        let trust = TrustStore::open(&state_dir)?;
        let state_file = StateFile::new(&state_dir);
        let (mut state, damaged) = state_file.load();
        if let Some(damage) = damaged {
            tracing::error!(
                reason = %error_chain::chain(&damage),
                "the updater state was damaged; starting from an empty state"
            );
        }
        let policy = config.download.policy();
        let client = download::client(&policy).map_err(|source| UpdateError::Download {
            target: "(client)".into(),
            source: Box::new(source),
        })?;
        let board = Arc::new(StatusBoard::new(&state_dir));
        if let Some(reason) = install::recover(&store, &state_file, &mut state, clock::now_ms())? {
            tracing::warn!(reason, "finished reverting a bundle after a restart");
        }
        let updater = Updater {
            config,
            store,
            trust,
            state_file,
            state,
            client,
            board,
        };
        updater.refresh_status(None);
        Ok(updater)
    }

    /// The status board (for the MQTT link and the metrics).
    pub fn board(&self) -> Arc<StatusBoard> {
        self.board.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The persisted state.
    pub fn state(&self) -> &UpdaterState {
        &self.state
    }

    fn refresh_status(&self, phase: Option<Phase>) {
        // The bundle is read only when `current` names another one than the status shows.
        let known = self.board.get().current;
        let current = match self.store.pointer(Pointer::Current) {
            Ok(Some(sha)) if known.as_ref().is_some_and(|k| k.sha256 == sha) => known,
            Ok(Some(_)) => match self.store.load(Pointer::Current) {
                Ok(bundle) => bundle.as_ref().map(install::model_ref),
                Err(error) => {
                    tracing::error!(error = %Chain(&error), "model store pointer current unreadable");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::error!(error = %Chain(&error), "model store pointer current unreadable");
                None
            }
        };
        let bad = self
            .state
            .bad
            .iter()
            .map(|(sha, b)| format!("{} {} ({}): {}", b.model, b.model_version, sha, b.reason))
            .collect();
        let deferred = self
            .state
            .deferred
            .iter()
            .map(|(sha, d)| {
                format!(
                    "{} {} ({}): tried again after {}: {}",
                    d.model,
                    d.model_version,
                    sha,
                    clock::rfc3339(d.retry_after_ms),
                    d.reason
                )
            })
            .collect();
        let pending = self
            .state
            .trial
            .as_ref()
            .map(|t| t.candidate.clone())
            .or_else(|| self.state.canary.as_ref().map(|c| c.candidate.clone()));
        self.board.update(|s| {
            s.current = current;
            s.bad = bad;
            s.deferred = deferred;
            if pending.is_some() {
                s.pending = pending;
                s.state = Phase::Trial;
            }
            if let Some(phase) = phase {
                s.state = phase;
            }
        });
    }

    /// Runs one cycle against `source` (the configured server, or a local copy).
    pub async fn cycle(&mut self, source: &Source) -> Result<Outcome, UpdateError> {
        let result = self.cycle_inner(source).await;
        let now = clock::now_ms();
        match &result {
            Ok(outcome) => {
                match outcome {
                    Outcome::UpToDate => tracing::info!("up to date"),
                    Outcome::Installed(m) => {
                        tracing::info!(model = %m.model, model_version = m.model_version, sha256 = %m.sha256, "new model installed and committed")
                    }
                    Outcome::Reverted { candidate, reason } => {
                        tracing::error!(model = %candidate.model, model_version = candidate.model_version, sha256 = %candidate.sha256, reason, "new model reverted")
                    }
                }
                self.board.update(|s| {
                    s.last_check_ms = Some(now);
                    s.pending = None;
                    if let Outcome::Reverted { candidate, reason } = outcome {
                        s.last_error = Some(format!(
                            "{} model_version {} reverted: {reason}",
                            candidate.model, candidate.model_version
                        ));
                    }
                });
                self.refresh_status(Some(Phase::Idle));
                self.board.activity().count_check(match outcome {
                    Outcome::UpToDate => CheckOutcome::UpToDate,
                    Outcome::Installed(_) => CheckOutcome::Installed,
                    Outcome::Reverted { .. } => CheckOutcome::Reverted,
                });
            }
            Err(error) if error.is_offline() => {
                tracing::info!(error = %error_chain::chain(error), "repository not reachable; will retry");
                self.board.update(|s| {
                    s.last_check_ms = Some(now);
                });
                self.refresh_status(Some(Phase::Offline));
                self.board.activity().count_check(CheckOutcome::Offline);
            }
            Err(error) => {
                let text = error_chain::chain(error);
                tracing::error!(error = %text, "update check failed");
                self.board.update(|s| {
                    s.last_check_ms = Some(now);
                    s.last_error = Some(text);
                });
                self.refresh_status(Some(Phase::Error));
                self.board.activity().count_check(CheckOutcome::Error);
            }
        }
        result
    }

    /// Applies a `model-updater forget-bad` request: the matching bad and deferred versions
    /// may be installed again.
    fn forget_requested(&mut self) -> Result<(), UpdateError> {
        let path = forget_path(&self.config.paths.state_dir);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        for request in text.lines().filter(|l| !l.trim().is_empty()) {
            let before = self.state.bad.len() + self.state.deferred.len();
            self.state
                .bad
                .retain(|sha, bad| !forget_matches(request, sha, bad.model_version));
            self.state
                .deferred
                .retain(|sha, d| !forget_matches(request, sha, d.model_version));
            let forgotten = before - self.state.bad.len() - self.state.deferred.len();
            if forgotten == 0 {
                tracing::warn!(request, "forget-bad: no bad or deferred version matches");
            } else {
                tracing::warn!(request, forgotten, "forget-bad: may be installed again");
            }
        }
        self.state_file
            .save(&self.state)
            .map_err(InstallError::from)?;
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %error_chain::chain(&error), "cannot remove the forget-bad request");
        }
        Ok(())
    }

    async fn cycle_inner(&mut self, source: &Source) -> Result<Outcome, UpdateError> {
        self.forget_requested()?;
        // A trial a restart interrupted is finished first; the check then goes on, so one cycle
        // always ends at the newest version this box should run.
        let mut resumed = if self.state.trial.is_some() {
            Some(self.await_verdict().await?)
        } else {
            None
        };
        if self.state.canary.is_some() {
            resumed = Some(self.run_canary().await?);
        } else if self
            .store
            .pointer(Pointer::Candidate)
            .ok()
            .flatten()
            .is_some()
        {
            // A candidate left behind by a crash after its canary ended.
            self.clear_candidate();
        }
        self.refresh_status(Some(Phase::Checking));
        let (current, evidence) = install::survey(&self.store);
        let verified = verify::check(source, &self.trust, &evidence, self.client.clone()).await?;
        let clock_warning = verified.clock.stepped_back_ms.map(|back| {
            format!(
                "the system clock stepped back {} s since the last successful check",
                back / 1000
            )
        });
        for skipped in &verified.skipped {
            tracing::warn!(skipped, "target ignored");
        }
        self.board.update(|s| {
            s.last_success_ms = Some(verified.clock.now_ms);
            s.last_error = None;
            s.clock_warning = clock_warning;
        });
        let floor = self
            .trust
            .load_floor(&evidence)?
            .floor
            .model_version(&self.config.target.model)
            .max(current.as_ref().map_or(0, |c| c.model_version));
        let choice = select::choose(
            &verified.releases,
            &self.config.target,
            floor,
            &select::Held {
                bad: &self.state.bad,
                deferred: &self.state.deferred,
                now_ms: clock::now_ms(),
            },
        );
        for refused in &choice.refused {
            tracing::warn!(refused, "release refused");
        }
        let Some(release) = choice.install else {
            if choice.skipped.is_empty() {
                tracing::info!(
                    releases = verified.releases.len(),
                    "nothing to install: the repository offers no release"
                );
            }
            for skipped in &choice.skipped {
                tracing::info!(skipped, "nothing to install from this release");
            }
            return Ok(resumed.unwrap_or(Outcome::UpToDate));
        };
        self.install(release).await
    }

    async fn install(&mut self, release: Release) -> Result<Outcome, UpdateError> {
        let pending = ModelRef {
            model: release.model.clone(),
            model_version: release.model_version,
            version: release.version.clone(),
            sha256: release.sha256_hex(),
        };
        tracing::info!(target = %release.target, model_version = release.model_version, bytes = release.length, "downloading");
        self.board.update(|s| {
            s.state = Phase::Downloading;
            s.pending = Some(pending.clone());
        });
        let download_error = |source| UpdateError::Download {
            target: release.target.clone(),
            source: Box::new(source),
        };
        let needed = release
            .length
            .saturating_mul(2)
            .saturating_add(self.config.download.free_space_margin_bytes);
        download::ensure_free_space(self.store.root(), needed).map_err(download_error)?;
        let partial = self
            .config
            .paths
            .state_dir
            .join("downloads")
            .join(format!("{}.part", pending.sha256));
        remove_other_downloads(&partial);
        let target = download::Target {
            url: release.url.clone(),
            length: release.length,
            sha256: release.sha256,
        };
        download::download_counted(
            &self.client,
            &target,
            &partial,
            &self.config.download.policy(),
            self.board.activity().downloaded_bytes(),
        )
        .await
        .map_err(download_error)?;

        self.board.update(|s| s.state = Phase::Installing);
        let bytes = std::fs::read(&partial).map_err(|source| UpdateError::Io {
            path: partial.clone(),
            source,
        })?;
        let staged = match install::stage(&self.store, bytes, &release) {
            Ok(staged) => staged,
            Err(error @ (InstallError::NotABundle { .. } | InstallError::Mismatch { .. })) => {
                let _ = std::fs::remove_file(&partial);
                self.mark_bad(&pending, &error_chain::chain(&error));
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let _ = std::fs::remove_file(&partial);
        if let Some(policy) =
            crate::canary::policy_for(self.config.canary.as_ref(), release.canary.as_ref())
        {
            // Write-ahead: the state names the candidate before the store does.
            self.state.canary = Some(CanaryRun {
                candidate: staged.clone(),
                since_ms: clock::now_ms(),
                policy,
            });
            self.state_file
                .save(&self.state)
                .map_err(InstallError::from)?;
            self.store
                .set_pointer(Pointer::Candidate, &staged.sha256)
                .map_err(InstallError::from)?;
            tracing::info!(sha256 = %staged.sha256, model_version = staged.model_version, "new model runs in shadow as the canary candidate");
            return self.run_canary().await;
        }
        self.promote(staged).await
    }

    /// Makes `candidate` current on trial, the same atomic switch for every install, and
    /// waits for the agent's verdict.
    async fn promote(&mut self, candidate: ModelRef) -> Result<Outcome, UpdateError> {
        let timeout_ms = self.config.trial.timeout_s.saturating_mul(1000);
        let sha256 = candidate.sha256.clone();
        install::start_trial(
            &self.store,
            &self.state_file,
            &mut self.state,
            candidate,
            clock::now_ms(),
            timeout_ms,
        )?;
        tracing::info!(%sha256, "new model is current; awaiting the agent's verdict");
        self.refresh_status(Some(Phase::Trial));
        self.await_verdict().await
    }

    /// Keeps the canary candidate in shadow until the policy promotes or rejects it (also
    /// after a restart). Promotion is an install's trial; rejection leaves `current` alone
    /// and marks the version bad.
    async fn run_canary(&mut self) -> Result<Outcome, UpdateError> {
        let mut said = String::new();
        loop {
            let Some(run) = self.state.canary.clone() else {
                return Ok(Outcome::UpToDate);
            };
            let policy = run.policy.clone();
            let sha = run.candidate.sha256.clone();
            if self
                .store
                .pointer(Pointer::Candidate)
                .ok()
                .flatten()
                .as_deref()
                != Some(sha.as_str())
            {
                self.store
                    .set_pointer(Pointer::Candidate, &sha)
                    .map_err(InstallError::from)?;
            }
            self.refresh_status(Some(Phase::Canary));
            let evidence = std::fs::read(&policy.evidence_file)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<crate::canary::Evidence>(&bytes).ok());
            let approved = std::fs::read_to_string(approval_path(&self.config.paths.state_dir))
                .is_ok_and(|text| {
                    crate::canary::approves(&text, &sha, run.candidate.model_version)
                });
            let shadow_ms = clock::now_ms().saturating_sub(run.since_ms);
            match crate::canary::judge(&policy, &sha, evidence.as_ref(), shadow_ms, approved) {
                Judgement::Wait(why) => {
                    if why != said {
                        tracing::info!(sha256 = %sha, why, "canary in shadow");
                        said = why;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Judgement::Promote => {
                    tracing::info!(sha256 = %sha, "canary promoted on its evidence");
                    // One state write turns the canary into the trial.
                    self.state.canary = None;
                    let outcome = self.promote(run.candidate).await;
                    self.clear_candidate();
                    return outcome;
                }
                Judgement::Reject(reason) => {
                    let reason = format!("rejected in canary: {reason}");
                    tracing::error!(sha256 = %sha, reason, "canary rejected; the model in service stays");
                    self.state.canary = None;
                    self.mark_bad(&run.candidate, &reason);
                    self.clear_candidate();
                    return Ok(Outcome::Reverted {
                        candidate: run.candidate,
                        reason,
                    });
                }
            }
        }
    }

    /// Removes the store's `candidate` pointer; the agent stops the shadow run.
    fn clear_candidate(&self) {
        if let Err(error) = self.store.clear_pointer(Pointer::Candidate) {
            tracing::error!(error = %Chain(&error), "cannot remove the model store's candidate pointer");
        }
    }

    fn mark_bad(&mut self, model: &ModelRef, reason: &str) {
        self.state.bad.insert(
            model.sha256.clone(),
            crate::state::BadVersion {
                model: model.model.clone(),
                model_version: model.model_version,
                reason: reason.to_owned(),
                at_ms: clock::now_ms(),
            },
        );
        if let Err(error) = self.state_file.save(&self.state) {
            tracing::error!(error = %Chain(&error), "cannot record a bad version");
        }
    }

    /// Waits for the agent's verdict on the bundle on trial, then commits or reverts.
    async fn await_verdict(&mut self) -> Result<Outcome, UpdateError> {
        let path = self.config.trial.health_file.clone();
        let max_attempts = self.config.trial.max_attempts;
        let mut last_read_error = None;
        // Said after 10 s, then every 30 s, while the agent has not answered for the bundle
        // (it usually does within seconds): the usual cause is an agent that is not running,
        // or that writes its report elsewhere.
        let mut next_waiting_note = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Some(trial) = &self.state.trial else {
                return Ok(Outcome::UpToDate);
            };
            let report = match defect_models::health::read(&path) {
                Ok(report) => report,
                Err(error) => {
                    let text = error_chain::chain(&error);
                    if last_read_error.as_ref() != Some(&text) {
                        tracing::warn!(error = %text, "cannot read the agent's model health report");
                        last_read_error = Some(text);
                    }
                    None
                }
            };
            let answered = report
                .as_ref()
                .is_some_and(|r| r.sha256 == trial.candidate.sha256);
            if !answered && tokio::time::Instant::now() >= next_waiting_note {
                let left_s = trial.deadline_ms.saturating_sub(clock::now_ms()) / 1000;
                tracing::warn!(
                    model_version = trial.candidate.model_version,
                    sha256 = %trial.candidate.sha256,
                    report = %path.display(),
                    left_s,
                    "trial waiting for the agent: no report for this bundle yet; is defect-agent running, with agent.model_health_file set to this file?"
                );
                next_waiting_note += Duration::from_secs(30);
            }
            match trial::judge(trial, report.as_ref(), clock::now_ms(), max_attempts) {
                Verdict::Pending => tokio::time::sleep(Duration::from_millis(200)).await,
                Verdict::Healthy => {
                    let committed = install::commit(
                        &self.store,
                        &self.state_file,
                        &mut self.state,
                        &self.trust,
                    )?;
                    return Ok(committed.map_or(Outcome::UpToDate, Outcome::Installed));
                }
                Verdict::Failed(reason) => {
                    let reverted = install::revert(
                        &self.store,
                        &self.state_file,
                        &mut self.state,
                        &reason,
                        clock::now_ms(),
                    )?;
                    return Ok(match reverted {
                        Some(candidate) => Outcome::Reverted { candidate, reason },
                        None => Outcome::UpToDate,
                    });
                }
                Verdict::Deferred(reason) => {
                    let deferred = install::defer(
                        &self.store,
                        &self.state_file,
                        &mut self.state,
                        &reason,
                        clock::now_ms(),
                    )?;
                    let Some(candidate) = deferred else {
                        return Ok(Outcome::UpToDate);
                    };
                    let retry = self
                        .state
                        .deferred
                        .get(&candidate.sha256)
                        .map_or(0, |d| d.retry_after_ms);
                    let reason = format!(
                        "{reason}; on latency alone, so it is not marked bad: tried again after {}",
                        clock::rfc3339(retry)
                    );
                    tracing::warn!(model_version = candidate.model_version, %reason, "model deferred");
                    return Ok(Outcome::Reverted { candidate, reason });
                }
            }
        }
    }
}

/// Tells systemd about the daemon's state (`Type=notify`); without systemd, nothing happens.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(error = %Chain(&error), "cannot notify systemd");
    }
}

/// Pings the systemd watchdog at half its period while the daemon's runtime runs (a cycle may
/// wait minutes on a download; a runtime that stopped scheduling tasks is what the watchdog
/// catches). Returns at once when no watchdog is set.
async fn watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    loop {
        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        tokio::time::sleep(period).await;
    }
}

/// The file `model-updater forget-bad` writes: what to forget, one model_version or bundle
/// SHA-256 per line; applied and removed at the start of the next cycle.
pub fn forget_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("forget-bad")
}

/// Whether a held version (bad or deferred) matches a `forget-bad` request line: its
/// `model_version`, or its SHA-256 or a prefix of at least 8 hex digits.
pub fn forget_matches(request: &str, sha256: &str, model_version: u64) -> bool {
    let request = request.trim();
    request.parse::<u64>().is_ok_and(|v| v == model_version)
        || (request.len() >= 8 && sha256.starts_with(&request.to_ascii_lowercase()))
}

/// The file `model-updater approve` writes: the SHA-256 of the canary candidate ops approved.
pub fn approval_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("canary-approval")
}

/// Removes partial downloads of other targets (a newer release superseded them).
fn remove_other_downloads(keep: &std::path::Path) {
    let Some(dir) = keep.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.path() != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The configured repository as a [`Source`].
pub fn configured_source(config: &Config) -> Result<Source, CheckError> {
    let (Some(metadata), Some(targets)) = (
        &config.repository.metadata_url,
        &config.repository.targets_url,
    ) else {
        return Err(CheckError::NoRepositoryUrl);
    };
    Source::new(metadata, targets, config.repository.trusted_root.clone())
}

/// Runs the daemon until `shutdown` resolves: a cycle now, then one per interval (with jitter)
/// or whenever an update is announced. Serves the metrics meanwhile when `[metrics]` is set.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), UpdateError> {
    // An air-gapped box has no repository URL: the daemon still finishes an interrupted trial
    // (when it opens the state) and reports its status, and `install-from` does the installs.
    let source = match configured_source(&config) {
        Ok(source) => Some(source),
        Err(CheckError::NoRepositoryUrl) => {
            tracing::info!(
                "no repository URL: this box installs from a folder only (model-updater install-from); not checking"
            );
            None
        }
        Err(error) => return Err(error.into()),
    };
    let mut updater = Updater::open(config)?;
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics = match &updater.config().metrics {
        Some(section) => {
            let registry = crate::metrics::registry(updater.board());
            let listener = MetricsListener::bind(&section.listen, registry).await?;
            let mut stopped = metrics_stopped;
            Some(tokio::spawn(listener.serve(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })))
        }
        None => None,
    };
    let announce = Arc::new(Notify::new());
    let link = match updater.config().mqtt.as_ref() {
        Some(mqtt) => Some(crate::mqtt::Link::start(
            mqtt,
            updater.board().subscribe(),
            announce.clone(),
            approval_path(&updater.config().paths.state_dir),
        )?),
        None => None,
    };
    // Ready once the state is recovered, the metrics listener bound and the broker link set
    // up; the watchdog is pinged from the same runtime the cycles run on.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog());
    tokio::pin!(shutdown);
    loop {
        let Some(source) = &source else {
            shutdown.as_mut().await;
            break;
        };
        tokio::select! {
            _ = updater.cycle(source) => {}
            () = &mut shutdown => break,
        }
        let poll = &updater.config().poll;
        let jitter = rand::rng().random_range(0..=poll.jitter_s.saturating_mul(1000));
        let wait = Duration::from_secs(poll.interval_s) + Duration::from_millis(jitter);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = announce.notified() => {}
            () = &mut shutdown => break,
        }
    }
    tracing::info!("stopping");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    let board = updater.board();
    board.update(|s| s.state = Phase::Stopped);
    if let Some(link) = link {
        link.close(&board.get()).await;
    }
    let _ = stop_metrics.send(true);
    if let Some(task) = metrics {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(())
}
