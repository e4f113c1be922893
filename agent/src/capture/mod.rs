//! Data capture for retraining: sample decided frames into a bounded local store, upload
//! them to a central server when it can be reached, export them for training scripts.
//!
//! - `sampler`: which frames to keep (uncertain, drifting, random, every reject); frames the
//!   canary candidate decided otherwise are always kept, with both models' scores.
//! - `store`: the bounded on-disk store; nothing waiting for upload is ever evicted.
//! - `upload`: resumable, rate-limited, idempotent upload to the central server (whose side
//!   of the protocol is `defect-central capture-server`, in the `defect-central` crate).
//! - `export`: the captured set as class folders plus a CSV (`defect-agent capture-export`).
//!
//! The worker thread chooses (cheap) and hands the frame's bytes to a writer thread through a
//! bounded queue; a full queue drops the capture (counted), never delays a decision.

pub mod export;
mod hook;
pub mod sampler;
pub mod store;
pub mod upload;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use defect_models::{Classification, Model, Verdict};
use defect_shared::error_chain::Chain;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use self::sampler::SamplingRules;
use self::store::{
    CandidateDecision, CaptureError, CaptureMeta, CaptureReason, CaptureStore, NewCapture,
};
use crate::monitor::Board;
use crate::monitor::alarms::AlarmKind;
use crate::outcome::unix_ms;

/// Captures that may wait for the writer thread.
const QUEUE: usize = 16;

/// Everything data capture is set up with.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// The store's folder.
    pub dir: PathBuf,
    /// Most image bytes kept.
    pub max_bytes: u64,
    /// What to keep.
    pub rules: SamplingRules,
    /// Upload settings; `None` keeps every frame on the device.
    pub upload: Option<upload::UploadSettings>,
}

/// Counters of the capture path.
#[derive(Debug, Default)]
pub struct CaptureStats {
    captured: [AtomicU64; CaptureReason::ALL.len()],
    dropped_busy: AtomicU64,
    dropped_full: AtomicU64,
    failed: AtomicU64,
    /// Items the central server confirmed.
    pub uploaded: AtomicU64,
    /// Bytes sent to the central server.
    pub upload_bytes: AtomicU64,
}

/// The store and the counters, shared by the writer thread, the uploader and the metrics.
#[derive(Debug)]
pub struct CaptureShared {
    /// The store.
    pub store: Mutex<CaptureStore>,
    /// The counters.
    pub stats: CaptureStats,
}

/// Handle the inference workers offer frames to; cheap to clone.
#[derive(Clone)]
pub struct Capture {
    tx: crossbeam_channel::Sender<NewCapture>,
    rules: SamplingRules,
    board: Option<Arc<Board>>,
    shared: Arc<CaptureShared>,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

/// The thread that writes captured frames to the store.
#[derive(Debug)]
pub struct CaptureWriter {
    thread: std::thread::JoinHandle<()>,
}

impl CaptureWriter {
    /// Waits for the writer to store what was offered and end; it ends once every [`Capture`]
    /// handle is dropped. Blocking.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the capture writer ended in a panic");
        }
    }
}

impl Capture {
    /// Opens the store and starts the writer thread; `board` tells which stations drift.
    pub fn start(
        settings: &CaptureSettings,
        board: Option<Arc<Board>>,
    ) -> Result<(Capture, CaptureWriter), CaptureError> {
        let evict_pending = settings.upload.is_none();
        let store = CaptureStore::open(&settings.dir, settings.max_bytes, evict_pending)?;
        tracing::info!(
            dir = %settings.dir.display(),
            items = store.len(),
            bytes = store.held_bytes(),
            pending = store.pending_count(),
            upload = settings.upload.as_ref().map(|u| u.url.as_str()),
            "capture store open"
        );
        let shared = Arc::new(CaptureShared {
            store: Mutex::new(store),
            stats: CaptureStats::default(),
        });
        let (tx, rx) = crossbeam_channel::bounded::<NewCapture>(QUEUE);
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("capture-writer".into())
            .spawn(move || {
                while let Ok(capture) = rx.recv() {
                    writer.write(capture);
                }
            })
            .map_err(|source| CaptureError::Io {
                path: settings.dir.clone(),
                source,
            })?;
        let capture = Capture {
            tx,
            rules: settings.rules.clone(),
            board,
            shared,
        };
        Ok((capture, CaptureWriter { thread }))
    }

    /// The store and counters.
    pub fn shared(&self) -> &Arc<CaptureShared> {
        &self.shared
    }

    /// Offers a decided frame; keeps it when the rules say so. Never blocks.
    pub fn offer(
        &self,
        station: &str,
        part: u64,
        acquired_ms: u64,
        model: &Model,
        result: &Classification,
        bytes: Vec<u8>,
    ) {
        let manifest = model.manifest();
        let drifting = self
            .board
            .as_ref()
            .is_some_and(|b| b.is_active(station, AlarmKind::Drift));
        let Some(reason) = self
            .rules
            .choose(manifest, result, drifting, &mut rand::rng())
        else {
            return;
        };
        self.keep(
            station,
            part,
            acquired_ms,
            (model, result),
            reason,
            None,
            bytes,
        );
    }

    /// Keeps a frame the canary candidate decided otherwise, with both models' scores.
    pub fn offer_disagreement(
        &self,
        station: &str,
        part: u64,
        acquired_ms: u64,
        current: (&Model, &Classification),
        candidate: (&Model, &Classification),
        bytes: Vec<u8>,
    ) {
        let (model, result) = candidate;
        let labels = &model.manifest().output.labels;
        let decision = CandidateDecision {
            model_version: model.manifest().model_version,
            result: verdict_name(result.decision.verdict).to_owned(),
            label: labels
                .get(result.decision.class)
                .cloned()
                .unwrap_or_default(),
            scores: labels.iter().cloned().zip(result.scores.clone()).collect(),
        };
        self.keep(
            station,
            part,
            acquired_ms,
            current,
            CaptureReason::Canary,
            Some(decision),
            bytes,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn keep(
        &self,
        station: &str,
        part: u64,
        acquired_ms: u64,
        (model, result): (&Model, &Classification),
        reason: CaptureReason,
        candidate: Option<CandidateDecision>,
        bytes: Vec<u8>,
    ) {
        let manifest = model.manifest();
        let labels = &manifest.output.labels;
        let meta = CaptureMeta {
            v: 1,
            id: String::new(),
            image: String::new(),
            sha256: String::new(),
            bytes: 0,
            station: station.to_owned(),
            part,
            reason,
            result: verdict_name(result.decision.verdict).to_owned(),
            label: labels
                .get(result.decision.class)
                .cloned()
                .unwrap_or_default(),
            scores: labels.iter().cloned().zip(result.scores.clone()).collect(),
            model: manifest.name.clone(),
            model_version: manifest.model_version,
            acquired_ms,
            captured_ms: unix_ms(),
            candidate,
        };
        if self.tx.try_send(NewCapture { bytes, meta }).is_err() {
            self.shared
                .stats
                .dropped_busy
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Reject => "reject",
    }
}

impl CaptureShared {
    fn write(&self, capture: NewCapture) {
        let reason = capture.meta.reason;
        let result = match self.store.lock() {
            Ok(mut store) => store.put(capture),
            Err(_) => return,
        };
        match result {
            Ok(meta) => {
                self.stats.captured[reason as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id = %meta.id, reason = reason.name(), "frame captured");
            }
            Err(error @ CaptureError::Full { .. }) => {
                let count = self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                if count.is_power_of_two() || count == 0 {
                    tracing::warn!(error = %Chain(&error), dropped = count + 1, "capture refused");
                }
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %Chain(&error), "cannot store a captured frame");
            }
        }
    }
}

impl Capture {
    /// Registers the capture store's and the upload's counters in `registry`, read when
    /// scraped.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(CaptureMetrics(Arc::clone(self.shared()))));
    }
}

/// The capture path as a metrics collector.
struct CaptureMetrics(Arc<CaptureShared>);

impl fmt::Debug for CaptureMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureMetrics").finish_non_exhaustive()
    }
}

impl Collector for CaptureMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let shared = &self.0;
        let stats = &shared.stats;
        let (bytes, items, pending, evicted) = shared
            .store
            .lock()
            .map(|s| (s.held_bytes(), s.len(), s.pending_count(), s.evicted()))
            .unwrap_or_default();
        {
            let mut metric = encoder.encode_descriptor(
                "captured_frames",
                "Frames kept for retraining since start, by reason.",
                None,
                MetricType::Counter,
            )?;
            for reason in CaptureReason::ALL {
                let value = stats.captured[reason as usize].load(Ordering::Relaxed);
                metric
                    .encode_family(&[("reason", reason.name())])?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "capture_dropped_frames",
                "Frames chosen for capture but not kept: busy (writer behind), full (cap reached and every item waiting for upload), failed (write error).",
                None,
                MetricType::Counter,
            )?;
            for (reason, counter) in [
                ("busy", &stats.dropped_busy),
                ("full", &stats.dropped_full),
                ("failed", &stats.failed),
            ] {
                metric
                    .encode_family(&[("reason", reason)])?
                    .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
            }
        }
        let gauges = [
            (
                "capture_store_bytes",
                "Image bytes in the capture store.",
                bytes,
            ),
            (
                "capture_store_items",
                "Items in the capture store.",
                items as u64,
            ),
            (
                "capture_pending_items",
                "Items in the capture store not yet held by the central server.",
                pending as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }
        let counters = [
            (
                "capture_evicted_items",
                "Items removed by the size cap since start, oldest first.",
                evicted,
            ),
            (
                "capture_uploaded_items",
                "Items the central server confirmed since start.",
                stats.uploaded.load(Ordering::Relaxed),
            ),
            (
                "capture_upload_bytes",
                "Bytes sent to the central server since start.",
                stats.upload_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}
