//! The model in service, and how a new one takes over.
//!
//! This module owns [`ModelSlot`], the one place workers take the model from, and the task that
//! fills it: the shipped bundle or the model store's `current` bundle is validated by the gate
//! (golden samples, latency budget) before it may serve; the store's pointer is then watched,
//! and a new bundle is loaded and validated in the background and swapped in between two
//! frames. A bundle that fails validation is refused: the old model keeps serving and the
//! failure goes to the log and to the retained MQTT status. The slot registers the model in
//! service for the metrics endpoint ([`ModelSlot::register_metrics`]).
//!
//! For the model updater, each store bundle's fate also goes to the model health report
//! (`agent.model_health_file`, see [`defect_models::health`]): `loading` with its attempt
//! number before it is read and validated, then `refused`, or `serving` once the model is in the
//! slot (so that every frame taken after the report reads `serving` is decided by that model).
//! The report is a courtesy: failing to write it is logged and never stops serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use defect_models::health::{self, HealthState, ModelHealth, Refusal};
use defect_models::store::{Pointer, Store, StoreError};
use defect_models::{Bundle, Model, gate};
use defect_shared::error_chain::{Chain, chain};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::health::Health;
use crate::outcome::unix_ms;

/// The model in service, as it is announced (on the MQTT `model` topic in the daemon).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelInfo {
    /// Bundle name.
    pub name: String,
    /// Human version string.
    pub version: String,
    /// Integer `model_version`.
    pub mv: u64,
    /// SHA-256 of the bundle file.
    pub sha256: String,
    /// When it went into service, Unix milliseconds.
    pub since: u64,
}

/// Where the model in service and a refused model's error are announced: the MQTT session in
/// the daemon. Serving reports through it and knows nothing of topics or payloads.
pub trait ModelAnnouncer: Send + Sync + 'static {
    /// A model went into service.
    fn model(&self, info: ModelInfo);
    /// A new model was refused (`Some`), or the refusal is over (`None`).
    fn model_error(&self, error: Option<String>);
}

/// The model workers use, and the candidate they run in shadow; each swapped as a whole.
#[derive(Debug, Default)]
pub struct ModelSlot {
    model: RwLock<Option<Arc<Model>>>,
    candidate: RwLock<Option<Arc<Model>>>,
}

impl ModelSlot {
    /// The model in service, if any.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.model.read().ok().and_then(|m| m.clone())
    }

    /// Puts a validated model in service.
    pub fn set(&self, model: Arc<Model>) {
        if let Ok(mut slot) = self.model.write() {
            *slot = Some(model);
        }
    }

    /// The candidate running in shadow, if any.
    pub fn candidate(&self) -> Option<Arc<Model>> {
        self.candidate.read().ok().and_then(|m| m.clone())
    }

    /// Sets or clears the candidate run in shadow.
    pub fn set_candidate(&self, model: Option<Arc<Model>>) {
        if let Ok(mut slot) = self.candidate.write() {
            *slot = model;
        }
    }
}

impl ModelSlot {
    /// Registers the model in service (`model_version`, `model_info`) in `registry`, read
    /// when scraped.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(ModelSlotMetrics(Arc::clone(self))));
    }
}

/// The model in service as a metrics collector.
#[derive(Debug)]
struct ModelSlotMetrics(Arc<ModelSlot>);

impl Collector for ModelSlotMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let model = self.0.current();
        encoder
            .encode_descriptor(
                "model_version",
                "model_version of the bundle in service (0 when none is).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&model.as_ref().map_or(0, |m| m.manifest().model_version))?;
        if let Some(model) = &model {
            let manifest = model.manifest();
            let labels = [
                ("name", manifest.name.as_str()),
                ("version", manifest.version.as_str()),
                ("sha256", model.digest()),
            ];
            encoder
                .encode_descriptor(
                    "model_info",
                    "The bundle in service: name, version and SHA-256 as labels, value 1.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&labels)?
                .encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

/// Where the served bundle comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The bundle compiled into the binary.
    Shipped,
    /// A bundle file given on the command line.
    File(PathBuf),
    /// The model store's `current` pointer, watched for changes.
    Store(PathBuf),
}

/// Why no model could be put in service.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The bundle could not be read or is not a bundle.
    #[error("{origin}")]
    Unreadable {
        /// Where the bundle came from.
        origin: String,
        /// Why it could not be read.
        #[source]
        source: Box<UnreadableBundle>,
        /// SHA-256 of the store bundle, when the store's pointer could be read.
        sha256: Option<String>,
    },
    /// The bundle failed the validation gate.
    #[error("{origin} refused")]
    Refused {
        /// Where the bundle came from.
        origin: String,
        /// The gate's reason.
        #[source]
        source: Box<gate::GateError>,
        /// SHA-256 of the bundle.
        sha256: Option<String>,
    },
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableBundle {
    /// The bytes are not a valid bundle (or the file could not be read).
    #[error(transparent)]
    Bundle(#[from] defect_models::BundleError),
    /// The model store or its bundle file could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store bundle's content is not the one its file name says.
    #[error("the bundle file's content has SHA-256 {0}, not the one it is named by")]
    Renamed(String),
    /// The thread loading the model stopped before it answered.
    #[error("the model loader stopped")]
    Loader(#[source] tokio::task::JoinError),
}

impl ServingError {
    /// SHA-256 of the bundle that could not be put in service, when known.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            ServingError::Unreadable { sha256, .. } | ServingError::Refused { sha256, .. } => {
                sha256.as_deref()
            }
        }
    }

    /// The reason alone, without the origin (the text of the health report's `error`).
    fn reason(&self) -> String {
        match self {
            ServingError::Unreadable { source, .. } => chain(source.as_ref()),
            ServingError::Refused { source, .. } => chain(source.as_ref()),
        }
    }
}

/// What was put in service: the validated model and its description.
type Validated = (Arc<Model>, ModelInfo);

/// A validated bundle and, for a store bundle with a health report, the report that says
/// `serving` once the model is in the slot ([`Trial::serving`]).
type Loaded = (Validated, Option<Trial>);

/// Loads and validates the bundle the source names now; `Ok(None)` when the store has no
/// `current` yet. A store bundle is reported to `report` (the health file), if given.
fn load(source: &ModelSource, report: Option<&Path>) -> Result<Option<Loaded>, ServingError> {
    let unreadable = |origin: String, source: UnreadableBundle| ServingError::Unreadable {
        origin,
        source: Box::new(source),
        sha256: None,
    };
    match source {
        ModelSource::Shipped => {
            let bundle = crate::embedded::shipped_bundle()
                .map_err(|e| unreadable("shipped bundle".into(), e.into()))?;
            validate(&bundle, "shipped bundle").map(|v| Some((v, None)))
        }
        ModelSource::File(path) => {
            let origin = path.display().to_string();
            let bundle = Bundle::open(path).map_err(|e| unreadable(origin.clone(), e.into()))?;
            validate(&bundle, &origin).map(|v| Some((v, None)))
        }
        ModelSource::Store(root) => {
            let pointed = Store::at(root)
                .pointer(Pointer::Current)
                .map_err(|e| unreadable(format!("{}/current", root.display()), e.into()))?;
            match pointed {
                Some(sha) => load_store_bundle(root, &sha, report).map(Some),
                None => Ok(None),
            }
        }
    }
}

/// Reads the store bundle `sha256` and validates it, with a health report before (`loading`)
/// and after (`refused`) when `report` names the health file; a bundle that passes is
/// returned with its report, for the caller to complete once the model serves.
fn load_store_bundle(
    root: &Path,
    sha256: &str,
    report: Option<&Path>,
) -> Result<Loaded, ServingError> {
    let trial = report.map(|path| Trial::begin(path, sha256));
    let store = Store::at(root);
    let origin = format!("{}/current ({sha256})", root.display());
    let path = store.bundle_path(sha256);
    let unreadable = |source: UnreadableBundle| ServingError::Unreadable {
        origin: origin.clone(),
        source: Box::new(source),
        sha256: Some(sha256.to_owned()),
    };
    let bundle = std::fs::read(&path)
        .map_err(|source| StoreError::Io { path, source })
        .and_then(|bytes| Bundle::from_bytes(bytes).map_err(StoreError::from))
        .map_err(|e| unreadable(e.into()))
        .and_then(|bundle| {
            if bundle.digest() == sha256 {
                Ok(bundle)
            } else {
                Err(unreadable(UnreadableBundle::Renamed(
                    bundle.digest().to_owned(),
                )))
            }
        });
    let model_version = bundle.as_ref().ok().map(|b| b.manifest().model_version);
    let result = bundle.and_then(|bundle| {
        validate(&bundle, &origin).map_err(|e| match e {
            ServingError::Refused { origin, source, .. } => ServingError::Refused {
                origin,
                source,
                sha256: Some(sha256.to_owned()),
            },
            other => other,
        })
    });
    match result {
        Ok(validated) => Ok((validated, trial)),
        Err(error) => {
            if let Some(trial) = trial {
                trial.refused(model_version, &error);
            }
            Err(error)
        }
    }
}

/// One load of a store bundle as the health report tells it: the attempt number is fixed
/// when it begins, from the report left by the previous load.
struct Trial {
    path: PathBuf,
    sha256: String,
    attempt: u32,
}

impl Trial {
    /// Writes `loading` for `sha256`, counting attempts on from an unfinished earlier load.
    fn begin(path: &Path, sha256: &str) -> Trial {
        let previous = health::read(path).unwrap_or_else(|error| {
            tracing::warn!(error = %Chain(&error), path = %path.display(), "cannot read the previous model health report; counting attempts from 1");
            None
        });
        let trial = Trial {
            path: path.to_owned(),
            sha256: sha256.to_owned(),
            attempt: health::next_attempt(previous.as_ref(), sha256),
        };
        if trial.attempt > 1 {
            tracing::warn!(
                sha256,
                attempt = trial.attempt,
                "an earlier agent died while loading this bundle; loading it again"
            );
        }
        trial.write(HealthState::Loading, None, None);
        trial
    }

    /// Writes `serving` with the bundle's `model_version`: call it once the model is in the
    /// slot.
    fn serving(&self, model_version: u64) {
        self.write(HealthState::Serving, Some(model_version), None);
    }

    /// Writes `refused` with the reason and its kind: over the latency budget only, or
    /// rejected.
    fn refused(&self, model_version: Option<u64>, error: &ServingError) {
        let over_budget = matches!(
            error,
            ServingError::Refused { source, .. }
                if matches!(source.as_ref(), gate::GateError::OverBudget { .. })
        );
        let kind = if over_budget {
            Refusal::OverBudget
        } else {
            Refusal::Rejected
        };
        self.write_report(
            HealthState::Refused,
            model_version,
            Some(error.reason()),
            Some(kind),
        );
    }

    /// Writes the report in `state`; a failure is logged, never returned.
    fn write(&self, state: HealthState, model_version: Option<u64>, error: Option<String>) {
        self.write_report(state, model_version, error, None);
    }

    /// Writes the report; a failure is logged, never returned.
    fn write_report(
        &self,
        state: HealthState,
        model_version: Option<u64>,
        error: Option<String>,
        refusal: Option<Refusal>,
    ) {
        let report = ModelHealth {
            v: health::VERSION,
            sha256: self.sha256.clone(),
            state,
            attempt: self.attempt,
            model_version,
            error,
            refusal,
            agent_pid: std::process::id(),
            at_ms: unix_ms(),
        };
        if let Err(error) = health::write(&self.path, &report) {
            tracing::warn!(error = %Chain(&error), path = %self.path.display(), ?state, "cannot write the model health report; serving goes on");
        }
    }
}

/// Runs of the validation gate when it fails on latency alone: a box busy deciding frames
/// measures slow, and one slow measurement is no verdict on the model.
const LATENCY_ATTEMPTS: u32 = 3;
/// Pause between two such runs.
const LATENCY_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Validates a bundle through the gate and describes it. Blocking: runs the model, and pauses
/// between the gate's runs when only its latency budget was missed.
fn validate(bundle: &Bundle, origin: &str) -> Result<Validated, ServingError> {
    let mut attempt = 1;
    let gated = loop {
        match gate::validate(bundle) {
            Err(gate::GateError::OverBudget {
                median_ms,
                budget_ms,
            }) if attempt < LATENCY_ATTEMPTS => {
                tracing::warn!(
                    origin,
                    attempt,
                    median_ms,
                    budget_ms,
                    "the model ran over its latency budget; a busy box measures slow, so the gate runs again"
                );
                std::thread::sleep(LATENCY_RETRY_PAUSE);
                attempt += 1;
            }
            gated => break gated,
        }
    };
    let (model, report) = gated.map_err(|source| ServingError::Refused {
        origin: origin.to_owned(),
        source: Box::new(source),
        sha256: None,
    })?;
    let manifest = model.manifest();
    tracing::info!(
        model = %manifest.name,
        version = %manifest.version,
        model_version = manifest.model_version,
        sha256 = %bundle.digest(),
        median_inference_ms = report.median_inference_ms,
        origin,
        "model validated"
    );
    let info = ModelInfo {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        mv: manifest.model_version,
        sha256: bundle.digest().to_owned(),
        since: unix_ms(),
    };
    Ok((model, info))
}

/// Puts the source's bundle in service at start-up. Returns the SHA-256 of the bundle now
/// serving; `None` when the store has no `current` yet (nothing is put in service then).
/// A store bundle's verdict goes to the health file `report`, if given.
pub async fn load_initial(
    source: &ModelSource,
    report: Option<&Path>,
    slot: &ModelSlot,
    health: &Health,
    publisher: &impl ModelAnnouncer,
) -> Result<Option<String>, ServingError> {
    let source = source.clone();
    let report = report.map(Path::to_owned);
    let loaded = tokio::task::spawn_blocking(move || load(&source, report.as_deref()))
        .await
        .map_err(|e| ServingError::Unreadable {
            origin: "model loader".into(),
            source: Box::new(UnreadableBundle::Loader(e)),
            sha256: None,
        })??;
    match loaded {
        Some(((model, info), trial)) => {
            let sha = info.sha256.clone();
            slot.set(model);
            if let Some(trial) = trial {
                trial.serving(info.mv);
            }
            health.set_model_loaded(true);
            publisher.model(info);
            Ok(Some(sha))
        }
        None => Ok(None),
    }
}

/// What the store watcher starts from: the store bundle serving and the one refused at
/// start-up (neither is validated again until `current` names another bundle).
#[derive(Debug, Clone, Default)]
pub struct WatchStart {
    /// SHA-256 of the store bundle in service, if one is.
    pub serving: Option<String>,
    /// SHA-256 of the store bundle refused at start-up, if one was.
    pub refused: Option<String>,
}

/// Told what becomes of the store's candidate as the watcher follows it (the canary's
/// evidence).
pub trait CandidateObserver: Send + Sync {
    /// A candidate passed the gate and starts running in shadow.
    fn candidate_started(&self, sha256: &str, model_version: u64);
    /// The gate refused a candidate: it never runs.
    fn candidate_refused(&self, sha256: &str, model_version: u64);
    /// No candidate any more (promoted, withdrawn or rejected).
    fn candidate_ended(&self);
}

/// The store's `candidate` as the watcher last saw it.
#[derive(Debug, Default)]
struct CandidateSeen {
    /// SHA-256 the pointer named at the last look (`Some(None)`: no candidate); `None`
    /// before the first look, which always acts (resuming or clearing the evidence).
    sha256: Option<Option<String>>,
}

/// Follows the store's `candidate` pointer: a new candidate is validated by the gate and run
/// in shadow; a removed one, or one that became `current`, stops.
async fn check_candidate(
    root: &Path,
    seen: &mut CandidateSeen,
    slot: &ModelSlot,
    canary: &dyn CandidateObserver,
) {
    let pointed = match Store::at(root).pointer(Pointer::Candidate) {
        Ok(pointed) => pointed,
        Err(error) => {
            tracing::warn!(error = %Chain(&error), "cannot read the model store's candidate pointer");
            return;
        }
    };
    let current = Store::at(root).pointer(Pointer::Current).ok().flatten();
    let wanted = pointed.filter(|sha| Some(sha) != current.as_ref());
    if seen.sha256.as_ref() == Some(&wanted) {
        return;
    }
    seen.sha256 = Some(wanted.clone());
    let Some(sha) = wanted else {
        if slot.candidate().is_some() {
            tracing::info!("canary ended: no candidate in the model store");
        }
        slot.set_candidate(None);
        canary.candidate_ended();
        return;
    };
    let (store_root, candidate) = (root.to_owned(), sha.clone());
    let loaded =
        tokio::task::spawn_blocking(move || load_store_bundle(&store_root, &candidate, None)).await;
    match loaded {
        Ok(Ok(((model, info), _))) => {
            slot.set_candidate(Some(model));
            canary.candidate_started(&sha, info.mv);
        }
        Ok(Err(error)) => {
            tracing::error!(error = %Chain(&error), sha256 = %sha, "candidate refused by the validation gate; it does not run");
            slot.set_candidate(None);
            canary.candidate_refused(&sha, 0);
        }
        Err(error) => tracing::error!(error = %Chain(&error), "model loader failed"),
    }
}

/// Watches the store's `current` pointer and swaps in each new bundle that passes the gate,
/// and its `candidate` pointer for the bundle to run in shadow (`canary`). Each `current`
/// bundle's verdict goes to the health file `report`, if given.
#[allow(clippy::too_many_arguments)]
pub async fn watch_store(
    root: PathBuf,
    start: WatchStart,
    report: Option<PathBuf>,
    poll: Duration,
    slot: Arc<ModelSlot>,
    health: Arc<Health>,
    publisher: impl ModelAnnouncer,
    canary: Arc<dyn CandidateObserver>,
) {
    let store = Store::at(&root);
    let WatchStart {
        mut serving,
        mut refused,
    } = start;
    let mut candidate = CandidateSeen::default();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        check_candidate(&root, &mut candidate, &slot, canary.as_ref()).await;
        let pointed = match store.pointer(Pointer::Current) {
            Ok(Some(sha)) => sha,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "cannot read the model store's current pointer");
                continue;
            }
        };
        if Some(&pointed) == serving.as_ref() || Some(&pointed) == refused.as_ref() {
            continue;
        }
        let (store_root, sha, report) = (root.clone(), pointed.clone(), report.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            load_store_bundle(&store_root, &sha, report.as_deref())
        })
        .await;
        match loaded {
            Ok(Ok(((model, info), trial))) => {
                tracing::info!(model = %info.name, model_version = info.mv, sha256 = %info.sha256, "new model in service");
                serving = Some(info.sha256.clone());
                refused = None;
                slot.set(model);
                if let Some(trial) = trial {
                    trial.serving(info.mv);
                }
                health.set_model_loaded(true);
                publisher.model(info);
                publisher.model_error(None);
            }
            Ok(Err(error)) => {
                let text = chain(&error);
                tracing::error!(error = %text, sha256 = %pointed, "new model refused; the previous model keeps serving");
                refused = Some(pointed);
                publisher.model_error(Some(text));
            }
            Err(error) => tracing::error!(error = %Chain(&error), "model loader failed"),
        }
    }
}
