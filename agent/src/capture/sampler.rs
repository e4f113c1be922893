//! Which decided frames are worth keeping for retraining.
//!
//! This module owns the choice, made on the worker thread for every frame the model decided
//! (so it must be cheap): every reject when asked; a defect score within a margin of its
//! class's reject threshold (the model was unsure); a fraction of frames while the station's
//! drift alarm is raised; and a random fraction of the rest.

use defect_models::{Classification, Manifest, Verdict};
use rand::Rng;

use super::store::CaptureReason;

/// The sampling rules (`[capture]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingRules {
    /// Keep a frame whose defect score is within this of its class's reject threshold.
    pub uncertain_margin: f32,
    /// Share of frames kept while the station drifts.
    pub drift_fraction: f64,
    /// Share of all other frames kept at random.
    pub random_fraction: f64,
    /// Keep every reject.
    pub every_reject: bool,
}

impl SamplingRules {
    /// Why this decided frame should be kept, if it should.
    pub fn choose(
        &self,
        manifest: &Manifest,
        result: &Classification,
        drifting: bool,
        rng: &mut impl Rng,
    ) -> Option<CaptureReason> {
        if self.every_reject && result.decision.verdict == Verdict::Reject {
            return Some(CaptureReason::Reject);
        }
        let output = &manifest.output;
        let uncertain = output
            .labels
            .iter()
            .zip(&result.scores)
            .filter_map(|(label, score)| {
                output
                    .reject_threshold
                    .get(label)
                    .filter(|_| output.defects.contains(label))
                    .map(|threshold| (score - threshold).abs())
            })
            .any(|distance| distance <= self.uncertain_margin);
        if uncertain {
            return Some(CaptureReason::Uncertain);
        }
        if drifting && self.drift_fraction > 0.0 && rng.random_bool(self.drift_fraction.min(1.0)) {
            return Some(CaptureReason::Drift);
        }
        if self.random_fraction > 0.0 && rng.random_bool(self.random_fraction.min(1.0)) {
            return Some(CaptureReason::Random);
        }
        None
    }
}
