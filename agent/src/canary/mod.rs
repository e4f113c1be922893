//! Canary: a candidate bundle run in shadow beside the model in service, and the evidence
//! for or against it.
//!
//! This module owns the evidence the candidate earns on live frames: frames compared, how
//! often both models agreed, the disagreements by direction (pass to reject, reject to pass:
//! a defect the candidate would let through, the costly one; and a different defect class),
//! each model's inference time on the same frames, candidate failures, and shadow runs
//! skipped because the box was busy. The inference workers record into [`Canary`] after a
//! frame's live outcome is on its way (`shadow`, a frame hook); the candidate never decides a
//! live frame. A task reports the evidence (the MQTT session publishes it retained on
//! `P/canary`) and writes it to `<state_dir>/canary.json` (read by the updater, and by the next
//! agent: evidence for the same candidate is resumed after a restart, never invented).

pub mod shadow;

use defect_shared::error_chain::Chain;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defect_models::{Classification, Verdict};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::outcome::unix_ms;
use crate::serving::CandidateObserver;

/// Inference times kept per model for the medians.
const LATENCY_SAMPLES: usize = 1000;

/// How often the evidence is published when it changed.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Where the candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    /// Running in shadow.
    Shadow,
    /// The validation gate refused it; it never ran in shadow.
    Refused,
}

/// The evidence on one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Schema version.
    pub v: u8,
    /// Shadow or refused.
    pub state: CanaryState,
    /// SHA-256 of the candidate bundle.
    pub candidate_sha256: String,
    /// The candidate's `model_version`.
    pub candidate_model_version: u64,
    /// The `model_version` of the model in service it was compared with last.
    pub current_model_version: u64,
    /// When the shadow run started (first start, kept across restarts), Unix milliseconds.
    pub started_ms: u64,
    /// Frames both models decided.
    pub frames: u64,
    /// Frames with the same verdict and class.
    pub agree: u64,
    /// The model in service passed, the candidate rejected.
    pub pass_to_reject: u64,
    /// The model in service rejected, the candidate passed: a defect let through.
    pub reject_to_pass: u64,
    /// Both rejected, for different defect classes.
    pub class_changes: u64,
    /// Disagreements by `"<result>:<label>-><result>:<label>"`, the model in service's
    /// first, such as `"reject:scratch->pass:scratch"`.
    pub flips: BTreeMap<String, u64>,
    /// Frames the candidate failed on (no decision).
    pub candidate_errors: u64,
    /// Shadow runs skipped because frames were waiting for a worker.
    pub skipped: u64,
    /// Median inference time of the model in service on the compared frames, ms (as of the
    /// last read of the evidence).
    pub current_ms_p50: f64,
    /// Median inference time of the candidate on the same frames, ms.
    pub candidate_ms_p50: f64,
    /// When the evidence last changed, Unix milliseconds.
    pub at_ms: u64,
    /// Recent inference times of the model in service, ms.
    #[serde(skip)]
    current_ms: VecDeque<f32>,
    /// Recent inference times of the candidate, ms.
    #[serde(skip)]
    candidate_ms: VecDeque<f32>,
}

impl Evidence {
    fn new(state: CanaryState, sha256: &str, model_version: u64) -> Evidence {
        Evidence {
            v: 1,
            state,
            candidate_sha256: sha256.to_owned(),
            candidate_model_version: model_version,
            current_model_version: 0,
            started_ms: unix_ms(),
            frames: 0,
            agree: 0,
            pass_to_reject: 0,
            reject_to_pass: 0,
            class_changes: 0,
            flips: BTreeMap::new(),
            candidate_errors: 0,
            skipped: 0,
            current_ms_p50: 0.0,
            candidate_ms_p50: 0.0,
            at_ms: unix_ms(),
            current_ms: VecDeque::new(),
            candidate_ms: VecDeque::new(),
        }
    }

    /// Share of compared frames both models decided alike; 0 before the first.
    pub fn agreement(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.agree as f64 / self.frames as f64
        }
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Reject => "reject",
    }
}

fn median(samples: &VecDeque<f32>) -> f64 {
    let mut sorted: Vec<f32> = samples.iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    sorted.get(sorted.len() / 2).map_or(0.0, |v| f64::from(*v))
}

fn push(samples: &mut VecDeque<f32>, value: f32) {
    samples.push_back(value);
    if samples.len() > LATENCY_SAMPLES {
        samples.pop_front();
    }
}

/// One side of a comparison: the decision and its labels.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The model's result on the frame.
    pub result: &'a Classification,
    /// Its labels.
    pub labels: &'a [String],
}

impl Side<'_> {
    fn label(&self) -> &str {
        self.labels
            .get(self.result.decision.class)
            .map_or("", String::as_str)
    }
}

/// The evidence on the current candidate, shared by the workers, the store watcher, the
/// publishing task and the metrics.
#[derive(Debug, Default)]
pub struct Canary {
    evidence: Mutex<Option<Evidence>>,
    file: Option<PathBuf>,
    changed: std::sync::atomic::AtomicBool,
}

impl Canary {
    /// Evidence kept in `file` (`<state_dir>/canary.json`), if given.
    pub fn new(file: Option<PathBuf>) -> Canary {
        Canary {
            evidence: Mutex::new(None),
            file,
            // Nothing to publish until the store watcher's first look says what runs.
            changed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A candidate starts its shadow run, resuming the evidence of an earlier run of the same
    /// bundle from the file.
    pub fn begin(&self, sha256: &str, model_version: u64) {
        let resumed = self
            .file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Evidence>(&b).ok())
            .filter(|e| e.candidate_sha256 == sha256 && e.state == CanaryState::Shadow);
        let evidence = match resumed {
            Some(evidence) => {
                tracing::info!(
                    sha256,
                    frames = evidence.frames,
                    "canary resumed with its evidence so far"
                );
                evidence
            }
            None => {
                tracing::info!(
                    sha256,
                    model_version,
                    "canary started: the candidate runs in shadow"
                );
                Evidence::new(CanaryState::Shadow, sha256, model_version)
            }
        };
        self.replace(Some(evidence));
    }

    /// The validation gate refused a candidate: it never runs.
    pub fn refused(&self, sha256: &str, model_version: u64) {
        self.replace(Some(Evidence::new(
            CanaryState::Refused,
            sha256,
            model_version,
        )));
    }

    /// No candidate any more (promoted, withdrawn or rejected).
    pub fn end(&self) {
        self.replace(None);
    }

    fn replace(&self, evidence: Option<Evidence>) {
        if let Ok(mut slot) = self.evidence.lock() {
            *slot = evidence;
        }
        self.changed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A copy of the evidence, if a candidate is set.
    pub fn evidence(&self) -> Option<Evidence> {
        let mut evidence = self.evidence.lock().ok().and_then(|e| e.clone())?;
        // The medians are taken here, when the evidence is read (once a second, and at a
        // scrape), not on the worker for every compared frame. Resumed evidence keeps its
        // medians until new frames are compared.
        if !evidence.current_ms.is_empty() {
            evidence.current_ms_p50 = median(&evidence.current_ms);
            evidence.candidate_ms_p50 = median(&evidence.candidate_ms);
        }
        Some(evidence)
    }

    fn update(&self, change: impl FnOnce(&mut Evidence)) {
        if let Ok(mut slot) = self.evidence.lock()
            && let Some(evidence) = slot.as_mut()
        {
            change(evidence);
            evidence.at_ms = unix_ms();
            self.changed
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Counts a shadow run skipped because frames were waiting.
    pub fn skipped(&self) {
        self.update(|e| e.skipped += 1);
    }

    /// Counts a frame the candidate failed on.
    pub fn candidate_failed(&self) {
        self.update(|e| e.candidate_errors += 1);
    }

    /// Compares both models' results on one frame; returns whether they disagree.
    pub fn compare(&self, current: Side<'_>, current_mv: u64, candidate: Side<'_>) -> bool {
        let (c, k) = (&current.result.decision, &candidate.result.decision);
        let same = c.verdict == k.verdict && current.label() == candidate.label();
        self.update(|e| {
            e.frames += 1;
            e.current_model_version = current_mv;
            push(
                &mut e.current_ms,
                current.result.timings.inference.as_secs_f32() * 1000.0,
            );
            push(
                &mut e.candidate_ms,
                candidate.result.timings.inference.as_secs_f32() * 1000.0,
            );
            if same {
                e.agree += 1;
                return;
            }
            match (c.verdict, k.verdict) {
                (Verdict::Pass, Verdict::Reject) => e.pass_to_reject += 1,
                (Verdict::Reject, Verdict::Pass) => e.reject_to_pass += 1,
                _ => e.class_changes += 1,
            }
            let key = format!(
                "{}:{}->{}:{}",
                verdict_name(c.verdict),
                current.label(),
                verdict_name(k.verdict),
                candidate.label()
            );
            *e.flips.entry(key).or_default() += 1;
        });
        !same
    }

    /// Takes the changed flag: whether the evidence changed since the last call.
    fn take_changed(&self) -> bool {
        self.changed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// The retained `P/canary` payload: the evidence, or `{"v":1,"state":"none"}`.
pub fn payload(evidence: Option<&Evidence>) -> Vec<u8> {
    match evidence {
        Some(evidence) => serde_json::to_vec(evidence).unwrap_or_default(),
        None => b"{\"v\":1,\"state\":\"none\"}".to_vec(),
    }
}

/// Reports the evidence when it changed, at most every second: its payload to `report`, and
/// the evidence to the evidence file.
pub async fn publish(canary: Arc<Canary>, report: impl Fn(Vec<u8>) + Send) {
    let mut ticker = tokio::time::interval(PUBLISH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !canary.take_changed() {
            continue;
        }
        let evidence = canary.evidence();
        let bytes = payload(evidence.as_ref());
        report(bytes.clone());
        if let Some(file) = canary.file.clone() {
            let written = tokio::task::spawn_blocking(move || match &evidence {
                Some(_) => defect_models::atomic::write(&file, &bytes),
                None => match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            })
            .await;
            if let Ok(Err(error)) = written {
                tracing::warn!(error = %Chain(&error), "cannot write the canary evidence file");
            }
        }
    }
}

impl CandidateObserver for Canary {
    fn candidate_started(&self, sha256: &str, model_version: u64) {
        self.begin(sha256, model_version);
    }

    fn candidate_refused(&self, sha256: &str, model_version: u64) {
        self.refused(sha256, model_version);
    }

    fn candidate_ended(&self) {
        self.end();
    }
}

impl Canary {
    /// Registers the canary's evidence in `registry`, read when scraped.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(CanaryMetrics(Arc::clone(self))));
    }
}

/// The canary as a metrics collector.
struct CanaryMetrics(Arc<Canary>);

impl fmt::Debug for CanaryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryMetrics").finish_non_exhaustive()
    }
}

impl Collector for CanaryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let evidence = self.0.evidence();
        let e = evidence.as_ref();
        let gauges = [
            (
                "canary_candidate_model_version",
                "model_version of the candidate in shadow (0 when none).",
                e.filter(|e| e.state == CanaryState::Shadow)
                    .map_or(0.0, |e| e.candidate_model_version as f64),
            ),
            (
                "canary_agreement_ratio",
                "Share of compared frames the candidate decided like the model in service.",
                e.map_or(0.0, Evidence::agreement),
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }
        let counters = [
            (
                "canary_frames",
                "Frames both the model in service and the candidate decided.",
                e.map_or(0, |e| e.frames),
            ),
            (
                "canary_skipped",
                "Shadow runs skipped because frames were waiting for a worker.",
                e.map_or(0, |e| e.skipped),
            ),
            (
                "canary_candidate_errors",
                "Frames the candidate failed on.",
                e.map_or(0, |e| e.candidate_errors),
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        {
            let mut metric = encoder.encode_descriptor(
                "canary_disagreements",
                "Frames the candidate decided otherwise, by direction.",
                None,
                MetricType::Counter,
            )?;
            for (direction, value) in [
                ("pass_to_reject", e.map_or(0, |e| e.pass_to_reject)),
                ("reject_to_pass", e.map_or(0, |e| e.reject_to_pass)),
                ("class", e.map_or(0, |e| e.class_changes)),
            ] {
                metric
                    .encode_family(&[("direction", direction)])?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "canary_inference_median_seconds",
            "Median inference time on the compared frames, by model (current, candidate).",
            None,
            MetricType::Gauge,
        )?;
        for (model, ms) in [
            ("current", e.map_or(0.0, |e| e.current_ms_p50)),
            ("candidate", e.map_or(0.0, |e| e.candidate_ms_p50)),
        ] {
            metric
                .encode_family(&[("model", model)])?
                .encode_gauge(&(ms / 1000.0))?;
        }
        Ok(())
    }
}
