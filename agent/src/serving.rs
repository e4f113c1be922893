//! The model in service, and how a new one takes over.
//!
//! This module owns [`ModelSlot`], the one place workers take the model from, and the task that
//! fills it: the shipped bundle or the model store's `current` bundle is validated by the gate
//! (golden samples, latency budget) before it may serve; the store's pointer is then watched,
//! and a new bundle is loaded and validated in the background and swapped in between two
//! frames. A bundle that fails validation is refused: the old model keeps serving and the
//! failure goes to the log and to the retained MQTT status.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use defect_models::store::{Pointer, Store};
use defect_models::{Bundle, Model, gate};

use crate::health::Health;
use crate::mqtt::Publisher;
use crate::mqtt::payload::ModelInfo;
use crate::outcome::unix_ms;

/// The model workers use; swapped as a whole.
#[derive(Debug, Default)]
pub struct ModelSlot {
    model: RwLock<Option<Arc<Model>>>,
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
    #[error("{origin}: {reason}")]
    Unreadable {
        /// Where the bundle came from.
        origin: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The bundle failed the validation gate.
    #[error("{origin} refused: {reason}")]
    Refused {
        /// Where the bundle came from.
        origin: String,
        /// The gate's reason.
        reason: String,
    },
}

/// Loads the bundle the source names now; `Ok(None)` when the store has no `current` yet.
fn read_bundle(source: &ModelSource) -> Result<Option<(Bundle, String)>, ServingError> {
    let unreadable = |origin: String, reason: String| ServingError::Unreadable { origin, reason };
    match source {
        ModelSource::Shipped => crate::embedded::shipped_bundle()
            .map(|b| Some((b, "shipped bundle".to_owned())))
            .map_err(|e| unreadable("shipped bundle".into(), e.to_string())),
        ModelSource::File(path) => Bundle::open(path)
            .map(|b| Some((b, path.display().to_string())))
            .map_err(|e| unreadable(path.display().to_string(), e.to_string())),
        ModelSource::Store(root) => {
            let origin = format!("{}/current", root.display());
            let bundle = Store::at(root)
                .load(Pointer::Current)
                .map_err(|e| unreadable(origin.clone(), e.to_string()))?;
            Ok(bundle.map(|b| (b, origin)))
        }
    }
}

/// Validates a bundle through the gate and describes it.
fn validate(bundle: &Bundle, origin: &str) -> Result<(Arc<Model>, ModelInfo), ServingError> {
    let (model, report) = gate::validate(bundle).map_err(|e| ServingError::Refused {
        origin: origin.to_owned(),
        reason: e.to_string(),
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

/// Puts the source's bundle in service at start-up. Returns whether a model is serving.
pub async fn load_initial(
    source: &ModelSource,
    slot: &ModelSlot,
    health: &Health,
    publisher: &Publisher,
) -> Result<Option<String>, ServingError> {
    let source = source.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, ServingError> {
        match read_bundle(&source)? {
            Some((bundle, origin)) => validate(&bundle, &origin).map(Some),
            None => Ok(None),
        }
    })
    .await
    .map_err(|e| ServingError::Unreadable {
        origin: "model loader".into(),
        reason: e.to_string(),
    })??;
    match loaded {
        Some((model, info)) => {
            let sha = info.sha256.clone();
            slot.set(model);
            health.set_model_loaded(true);
            publisher.model(info);
            Ok(Some(sha))
        }
        None => Ok(None),
    }
}

/// Watches the store's `current` pointer and swaps in each new bundle that passes the gate.
pub async fn watch_store(
    root: PathBuf,
    mut serving: Option<String>,
    poll: Duration,
    slot: Arc<ModelSlot>,
    health: Arc<Health>,
    publisher: Publisher,
) {
    let store = Store::at(&root);
    let mut refused: Option<String> = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let pointed = match store.pointer(Pointer::Current) {
            Ok(Some(sha)) => sha,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot read the model store's current pointer");
                continue;
            }
        };
        if Some(&pointed) == serving.as_ref() || Some(&pointed) == refused.as_ref() {
            continue;
        }
        let source = ModelSource::Store(root.clone());
        let loaded = tokio::task::spawn_blocking(move || match read_bundle(&source) {
            Ok(Some((bundle, origin))) => validate(&bundle, &origin),
            Ok(None) => Err(ServingError::Unreadable {
                origin: "store".into(),
                reason: "current pointer vanished".into(),
            }),
            Err(e) => Err(e),
        })
        .await;
        match loaded {
            Ok(Ok((model, info))) => {
                tracing::info!(model = %info.name, model_version = info.mv, sha256 = %info.sha256, "new model in service");
                serving = Some(info.sha256.clone());
                refused = None;
                slot.set(model);
                health.set_model_loaded(true);
                publisher.model(info);
                publisher.model_error(None);
            }
            Ok(Err(error)) => {
                tracing::error!(%error, sha256 = %pointed, "new model refused; the previous model keeps serving");
                refused = Some(pointed);
                publisher.model_error(Some(error.to_string()));
            }
            Err(error) => tracing::error!(%error, "model loader failed"),
        }
    }
}
