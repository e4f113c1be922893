//! The validation gate: a bundle is served only after it proves itself on this box.
//!
//! This module owns the checks run before a model may decide anything: the bundle's agent
//! compatibility, loading it into tract, running every golden sample through the full frame
//! path and comparing the scores with the expected ones within the tolerance, and measuring
//! the median single-core inference time against the latency budget. A refused bundle gets a
//! [`GateError`] that says exactly which check failed and with which values.

use std::sync::Arc;
use std::time::Instant;

use crate::bundle::Bundle;
use crate::classifier::{ClassifyError, Model, ModelError};
use crate::frame::{self, DecodeOptions};
use crate::manifest::parse_semver;

/// Version of this build of defect-agent, compared with a bundle's `min_agent_version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Inference runs timed for the latency check, after warm-up.
const TIMED_RUNS: usize = 15;
/// Untimed runs first, so caches and lazy initialisation do not count.
const WARMUP_RUNS: usize = 3;

/// One golden sample's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenOutcome {
    /// Path of the sample inside the bundle.
    pub file: String,
    /// Largest absolute difference between a score and its expected value.
    pub max_abs_diff: f32,
    /// Scores the model gave.
    pub scores: Vec<f32>,
}

/// What the gate measured on a bundle it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    /// Every golden sample's outcome.
    pub golden: Vec<GoldenOutcome>,
    /// Median single-core inference time, in milliseconds.
    pub median_inference_ms: f64,
    /// The bundle's latency budget, in milliseconds.
    pub latency_budget_ms: f64,
}

/// A golden sample whose scores are off.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenMismatch {
    /// Path of the sample inside the bundle.
    pub file: String,
    /// Label with the largest difference.
    pub label: String,
    /// Expected score for that label.
    pub expected: f32,
    /// Score the model gave.
    pub actual: f32,
}

/// Why the gate refused a bundle.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The bundle needs a newer agent.
    #[error("bundle needs defect-agent {required} or newer, this is {AGENT_VERSION}")]
    AgentTooOld {
        /// The bundle's `min_agent_version`.
        required: String,
    },
    /// The model did not load.
    #[error(transparent)]
    Load(#[from] ModelError),
    /// A golden sample could not be run.
    #[error("golden sample {file}")]
    GoldenUnusable {
        /// Path inside the bundle.
        file: String,
        /// What went wrong.
        source: ClassifyError,
    },
    /// Golden samples gave scores outside the tolerance.
    #[error(
        "{} of {total} golden sample(s) out of tolerance {tolerance}: {}",
        .mismatches.len(),
        describe(.mismatches)
    )]
    GoldenMismatch {
        /// Samples that failed.
        mismatches: Vec<GoldenMismatch>,
        /// Number of samples checked.
        total: usize,
        /// The bundle's tolerance.
        tolerance: f32,
    },
    /// Inference is slower than the bundle's budget on this box.
    #[error("median inference time {median_ms:.2} ms is over the latency budget of {budget_ms} ms")]
    OverBudget {
        /// Measured median.
        median_ms: f64,
        /// The bundle's budget.
        budget_ms: f64,
    },
}

fn describe(mismatches: &[GoldenMismatch]) -> String {
    mismatches
        .iter()
        .map(|m| {
            format!(
                "{} scores {:.4} for {:?}, expected {:.4}",
                m.file, m.actual, m.label, m.expected
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads a bundle and runs every check; returns the model ready to serve and what was measured.
pub fn validate(bundle: &Bundle) -> Result<(Arc<Model>, GateReport), GateError> {
    let manifest = bundle.manifest();
    let required = &manifest.min_agent_version;
    let ours = parse_semver(AGENT_VERSION);
    if parse_semver(required).is_none_or(|needed| ours.is_none_or(|ours| ours < needed)) {
        return Err(GateError::AgentTooOld {
            required: required.clone(),
        });
    }
    let model = Model::load(bundle)?;
    let mut classifier = model.classifier()?;
    let tolerance = manifest.validation.tolerance;
    let mut outcomes = Vec::new();
    let mut mismatches = Vec::new();
    let mut first_frame = None;
    for sample in &manifest.validation.golden {
        let unusable = |source| GateError::GoldenUnusable {
            file: sample.file.clone(),
            source,
        };
        let bytes = bundle.golden_file(&sample.file).unwrap_or_default();
        let frame = frame::decode(bytes, &DecodeOptions::default())
            .map_err(|e| unusable(ClassifyError::Decode(e)))?;
        let result = classifier.classify(&frame).map_err(unusable)?;
        if first_frame.is_none() {
            first_frame = Some(frame);
        }
        let (worst, diff) = result
            .scores
            .iter()
            .zip(&sample.expected)
            .map(|(a, e)| (a - e).abs())
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        if diff > tolerance || diff.is_nan() {
            mismatches.push(GoldenMismatch {
                file: sample.file.clone(),
                label: manifest
                    .output
                    .labels
                    .get(worst)
                    .cloned()
                    .unwrap_or_default(),
                expected: sample.expected.get(worst).copied().unwrap_or(f32::NAN),
                actual: result.scores.get(worst).copied().unwrap_or(f32::NAN),
            });
        }
        outcomes.push(GoldenOutcome {
            file: sample.file.clone(),
            max_abs_diff: diff,
            scores: result.scores,
        });
    }
    if !mismatches.is_empty() {
        return Err(GateError::GoldenMismatch {
            mismatches,
            total: outcomes.len(),
            tolerance,
        });
    }
    let median_ms = match first_frame {
        Some(frame) => {
            let (input, _) =
                classifier
                    .preprocess(&frame)
                    .map_err(|source| GateError::GoldenUnusable {
                        file: "latency run".into(),
                        source,
                    })?;
            median_inference_ms(&mut classifier, input)?
        }
        None => 0.0,
    };
    let budget_ms = manifest.validation.latency_budget_ms;
    if median_ms > budget_ms {
        return Err(GateError::OverBudget {
            median_ms,
            budget_ms,
        });
    }
    Ok((
        model,
        GateReport {
            golden: outcomes,
            median_inference_ms: median_ms,
            latency_budget_ms: budget_ms,
        },
    ))
}

fn median_inference_ms(
    classifier: &mut crate::classifier::Classifier,
    input: tract_onnx::prelude::Tensor,
) -> Result<f64, GateError> {
    let unusable = |source| GateError::GoldenUnusable {
        file: "latency run".into(),
        source,
    };
    let mut times = Vec::with_capacity(TIMED_RUNS);
    for run in 0..WARMUP_RUNS + TIMED_RUNS {
        let start = Instant::now();
        classifier.infer(input.clone()).map_err(unusable)?;
        if run >= WARMUP_RUNS {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
