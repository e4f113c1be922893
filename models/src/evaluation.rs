//! Evaluating a bundle on labelled frames, with gates a model CI/CD job can enforce, and the
//! offline twin of the canary: two bundles on the same frames, every flip listed.
//!
//! This module owns the [`Evaluation`] report (`model-bundle evaluate --json` writes it and
//! `model-bundle card --evaluation` reads it): the figures at the bundle's own thresholds,
//! latency on this box, unreadable frames, the worst misses, the gates and their verdicts, and
//! the comparison with another bundle.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::classifier::{Model, ModelError};
use crate::dataset::{DatasetError, ImageSet};
use crate::decision::{Decision, Verdict};
use crate::figures::{self, Figures, Miss};
use crate::manifest::DataRecord;
use crate::model_input::DecodeMode;
use crate::scoring::{self, ScoredSet, ScoringOptions, percentiles_ms};

/// Which bundle was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSummary {
    /// The model's name.
    pub name: String,
    /// Its human-readable version.
    pub version: String,
    /// Its integer version.
    pub model_version: u64,
    /// SHA-256 of the bundle file.
    pub sha256: String,
}

impl BundleSummary {
    /// The summary of a bundle.
    pub fn of(bundle: &Bundle) -> Self {
        let m = bundle.manifest();
        BundleSummary {
            name: m.name.clone(),
            version: m.version.clone(),
            model_version: m.model_version,
            sha256: bundle.digest().to_owned(),
        }
    }
}

/// Latency measured on this box while evaluating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Frames evaluated at once, one per thread.
    pub jobs: usize,
    /// Median model run, milliseconds.
    pub inference_median_ms: f64,
    /// 99th percentile model run, milliseconds.
    pub inference_p99_ms: f64,
    /// Median whole frame (decode, preprocess, inference), milliseconds.
    pub frame_median_ms: f64,
    /// 99th percentile whole frame, milliseconds.
    pub frame_p99_ms: f64,
}

/// A frame that could not be decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The image's name in the set.
    pub file: String,
    /// Why.
    pub error: String,
}

/// One gate and whether the evaluation met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    /// The gate, such as `min_recall` or `min_class_recall.scratch`.
    pub gate: String,
    /// The limit set.
    pub limit: f64,
    /// The measured value; `None` when the data cannot show it (no frames of that kind).
    pub value: Option<f64>,
    /// Whether the limit is met; a value that cannot be measured does not meet it.
    pub met: bool,
}

/// One side of a flip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlipSide {
    /// Pass or reject.
    pub verdict: Verdict,
    /// The decided class.
    pub class: String,
    /// Its score.
    pub confidence: f32,
}

/// A frame on which the two bundles decide differently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// The image's name in the set.
    pub file: String,
    /// Its true label.
    pub label: String,
    /// What the evaluated bundle decides.
    pub bundle: FlipSide,
    /// What the other bundle decides.
    pub other: FlipSide,
}

/// Two bundles on the same frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The other bundle (usually the one in service).
    pub other: BundleSummary,
    /// Its figures on the same frames at its own thresholds.
    pub other_figures: Figures,
    /// Its latency on this box.
    pub other_latency: Latency,
    /// Frames the other bundle rejects and the evaluated one passes.
    pub reject_to_pass: u64,
    /// Frames the other bundle passes and the evaluated one rejects.
    pub pass_to_reject: u64,
    /// Frames both reject, as different classes.
    pub class_changes: u64,
    /// Every frame decided differently (verdict or class), in name order.
    pub flips: Vec<Flip>,
}

/// The report of `model-bundle evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The bundle evaluated.
    pub bundle: BundleSummary,
    /// The frames it was evaluated on.
    pub data: DataRecord,
    /// `agent` (DCT-scaled JPEG decoding where the agent uses it) or `full`.
    pub decode: String,
    /// The bundle's labels, in order.
    pub labels: Vec<String>,
    /// The bundle's reject thresholds.
    pub thresholds: BTreeMap<String, f32>,
    /// The figures at those thresholds.
    pub figures: Figures,
    /// Latency on this box.
    pub latency: Latency,
    /// Frames that could not be decided (a "no decision" on the line).
    pub unreadable: Vec<Unreadable>,
    /// All misses.
    pub miss_count: u64,
    /// The worst misses, worst first.
    pub misses: Vec<Miss>,
    /// The gates asked for and their verdicts.
    #[serde(default)]
    pub gates: Vec<GateCheck>,
    /// The comparison with another bundle, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

impl Evaluation {
    /// Whether every gate is met (true without gates).
    pub fn gates_met(&self) -> bool {
        self.gates.iter().all(|g| g.met)
    }
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The frames could not be listed or do not fit the bundle's labels.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A bundle's model does not load.
    #[error("{name}")]
    Model {
        /// The bundle's model name and version.
        name: String,
        /// What tract said.
        source: ModelError,
    },
}

/// How an evaluation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluateOptions {
    /// Decode mode and threads.
    pub scoring: ScoringOptions,
    /// How many of the worst misses to keep.
    pub misses: usize,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            scoring: ScoringOptions::default(),
            misses: 20,
        }
    }
}

/// Evaluates `bundle` on `set`, and compares it with `other` on the same frames when given.
pub fn evaluate(
    bundle: &Bundle,
    set: &ImageSet,
    other: Option<&Bundle>,
    options: EvaluateOptions,
) -> Result<Evaluation, EvaluateError> {
    let labels = bundle.manifest().output.labels.clone();
    set.check_labels(&labels)?;
    if let Some(other) = other {
        set.check_labels(&other.manifest().output.labels)?;
    }
    let (model, scored) = run(bundle, set, options.scoring)?;
    let mut evaluation = report(bundle, &model, set, &scored, options);
    if let Some(other) = other {
        let (other_model, other_scored) = run(other, set, options.scoring)?;
        let other_report = report(other, &other_model, set, &other_scored, options);
        evaluation.comparison = Some(compare(
            (&model, &scored),
            (&other_model, &other_scored),
            other_report,
        ));
    }
    Ok(evaluation)
}

fn run(
    bundle: &Bundle,
    set: &ImageSet,
    scoring: ScoringOptions,
) -> Result<(Arc<Model>, ScoredSet), EvaluateError> {
    let m = bundle.manifest();
    let model_error = |source| EvaluateError::Model {
        name: format!("{} {}", m.name, m.version),
        source,
    };
    let model = Model::load(bundle).map_err(model_error)?;
    let scored = scoring::score_set(&model, set, scoring).map_err(model_error)?;
    Ok((model, scored))
}

fn report(
    bundle: &Bundle,
    model: &Model,
    set: &ImageSet,
    scored: &ScoredSet,
    options: EvaluateOptions,
) -> Evaluation {
    let manifest = bundle.manifest();
    let labels = &manifest.output.labels;
    let rule = model.rule();
    let frames: Vec<(&str, usize, &[f32])> = scored
        .scored(labels)
        .filter_map(|(f, label, s)| label.map(|l| (f.sample.name.as_str(), l, s.scores.as_slice())))
        .collect();
    let figures = figures::figures(labels, rule, frames.iter().map(|(_, l, s)| (*l, *s)));
    let all_misses = figures::misses(labels, rule, frames.iter().copied());
    let inference: Vec<_> = scored
        .scored(labels)
        .map(|(_, _, s)| s.timings.inference)
        .collect();
    let whole: Vec<_> = scored
        .scored(labels)
        .map(|(_, _, s)| s.timings.total())
        .collect();
    let (inference_median_ms, inference_p99_ms) = percentiles_ms(inference);
    let (frame_median_ms, frame_p99_ms) = percentiles_ms(whole);
    Evaluation {
        bundle: BundleSummary::of(bundle),
        data: DataRecord {
            source: set.source.display().to_string(),
            frames: scored.frames.len() as u64,
            sha256: scored.fingerprint.clone(),
        },
        decode: match options.scoring.mode {
            DecodeMode::Agent => "agent".into(),
            DecodeMode::Full => "full".into(),
        },
        labels: labels.clone(),
        thresholds: manifest.output.reject_threshold.clone(),
        figures,
        latency: Latency {
            jobs: options.scoring.jobs,
            inference_median_ms,
            inference_p99_ms,
            frame_median_ms,
            frame_p99_ms,
        },
        unreadable: scored
            .failures()
            .map(|(s, e)| Unreadable {
                file: s.name.clone(),
                error: e.to_owned(),
            })
            .collect(),
        miss_count: all_misses.len() as u64,
        misses: all_misses.into_iter().take(options.misses).collect(),
        gates: Vec::new(),
        comparison: None,
    }
}

fn side(model: &Model, scores: &[f32]) -> (Decision, FlipSide) {
    let decision = model.rule().decide(scores);
    let class = model
        .manifest()
        .output
        .labels
        .get(decision.class)
        .cloned()
        .unwrap_or_default();
    (
        decision,
        FlipSide {
            verdict: decision.verdict,
            class,
            confidence: decision.confidence,
        },
    )
}

fn compare(
    ours: (&Model, &ScoredSet),
    theirs: (&Model, &ScoredSet),
    other: Evaluation,
) -> Comparison {
    let mut flips = Vec::new();
    let (mut reject_to_pass, mut pass_to_reject, mut class_changes) = (0, 0, 0);
    for (a, b) in ours.1.frames.iter().zip(&theirs.1.frames) {
        let (Ok(sa), Ok(sb)) = (&a.result, &b.result) else {
            continue;
        };
        let (da, fa) = side(ours.0, &sa.scores);
        let (db, fb) = side(theirs.0, &sb.scores);
        if fa.class == fb.class && da.verdict == db.verdict {
            continue;
        }
        match (db.verdict, da.verdict) {
            (Verdict::Reject, Verdict::Pass) => reject_to_pass += 1,
            (Verdict::Pass, Verdict::Reject) => pass_to_reject += 1,
            (Verdict::Reject, Verdict::Reject) => class_changes += 1,
            (Verdict::Pass, Verdict::Pass) => {}
        }
        flips.push(Flip {
            file: a.sample.name.clone(),
            label: a.sample.label.clone().unwrap_or_default(),
            bundle: fa,
            other: fb,
        });
    }
    Comparison {
        other: other.bundle,
        other_figures: other.figures,
        other_latency: other.latency,
        reject_to_pass,
        pass_to_reject,
        class_changes,
        flips,
    }
}

/// Limits an evaluation must meet; unset limits are not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gates {
    /// Lowest defect recall.
    pub min_recall: Option<f64>,
    /// Highest false-reject rate.
    pub max_false_reject: Option<f64>,
    /// Lowest pass/reject accuracy.
    pub min_accuracy: Option<f64>,
    /// Lowest recall of one class, per label.
    pub min_class_recall: BTreeMap<String, f64>,
    /// Highest 99th-percentile inference time, milliseconds.
    pub max_p99_ms: Option<f64>,
    /// Highest number of frames the other bundle rejects and this one passes (with a comparison).
    pub max_reject_to_pass: Option<u64>,
}

impl Gates {
    /// Checks every set limit and records the verdicts in the evaluation.
    pub fn apply(&self, evaluation: &mut Evaluation) {
        let f = &evaluation.figures;
        let mut checks = Vec::new();
        let at_least = |gate: &str, limit: f64, value: Option<f64>| GateCheck {
            gate: gate.to_owned(),
            limit,
            value,
            met: value.is_some_and(|v| v >= limit),
        };
        let at_most = |gate: &str, limit: f64, value: Option<f64>| GateCheck {
            gate: gate.to_owned(),
            limit,
            value,
            met: value.is_some_and(|v| v <= limit),
        };
        if let Some(limit) = self.min_recall {
            checks.push(at_least("min_recall", limit, f.defect_recall));
        }
        if let Some(limit) = self.max_false_reject {
            checks.push(at_most("max_false_reject", limit, f.false_reject_rate));
        }
        if let Some(limit) = self.min_accuracy {
            let value = (f.frames > 0).then_some(f.pass_reject_accuracy);
            checks.push(at_least("min_accuracy", limit, value));
        }
        for (label, limit) in &self.min_class_recall {
            let value = f
                .per_class
                .iter()
                .find(|c| &c.label == label)
                .and_then(|c| c.recall);
            checks.push(at_least(
                &format!("min_class_recall.{label}"),
                *limit,
                value,
            ));
        }
        if let Some(limit) = self.max_p99_ms {
            let value = (f.frames > 0).then_some(evaluation.latency.inference_p99_ms);
            checks.push(at_most("max_p99_ms", limit, value));
        }
        if let Some(limit) = self.max_reject_to_pass {
            let value = evaluation
                .comparison
                .as_ref()
                .map(|c| c.reject_to_pass as f64);
            checks.push(at_most("max_reject_to_pass", limit as f64, value));
        }
        evaluation.gates = checks;
    }
}
