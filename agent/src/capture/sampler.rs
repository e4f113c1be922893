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

#[cfg(test)]
mod tests {
    use defect_models::Decision;
    use defect_models::preprocess::InputStats;

    use super::*;

    fn manifest() -> Manifest {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/shipped/manifest.toml"
        );
        let text = std::fs::read_to_string(path).expect("shipped manifest");
        Manifest::from_toml(&text).expect("manifest")
    }

    /// A decision with these scores (good, scratch, dent, crack, stain); thresholds are 0.4.
    fn result(scores: [f32; 5]) -> Classification {
        let (class, confidence) = scores
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        Classification {
            scores: scores.to_vec(),
            decision: Decision {
                verdict: if class == 0 {
                    Verdict::Pass
                } else {
                    Verdict::Reject
                },
                class,
                confidence,
            },
            input: InputStats {
                brightness: 90.0,
                contrast: 40.0,
            },
            timings: defect_models::Timings::default(),
        }
    }

    fn rules() -> SamplingRules {
        SamplingRules {
            uncertain_margin: 0.1,
            drift_fraction: 0.0,
            random_fraction: 0.0,
            every_reject: false,
        }
    }

    #[test]
    fn a_defect_score_near_its_threshold_is_uncertain_a_clear_one_is_not() {
        let m = manifest();
        let mut rng = rand::rng();
        let near = result([0.65, 0.35, 0.0, 0.0, 0.0]);
        let clear = result([0.99, 0.01, 0.0, 0.0, 0.0]);
        let clear_reject = result([0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            rules().choose(&m, &near, false, &mut rng),
            Some(CaptureReason::Uncertain)
        );
        assert_eq!(rules().choose(&m, &clear, false, &mut rng), None);
        assert_eq!(rules().choose(&m, &clear_reject, false, &mut rng), None);
        let every_reject = SamplingRules {
            every_reject: true,
            ..rules()
        };
        assert_eq!(
            every_reject.choose(&m, &clear_reject, false, &mut rng),
            Some(CaptureReason::Reject)
        );
    }

    #[test]
    fn drifting_frames_and_the_random_share_are_sampled_at_their_rates() {
        let m = manifest();
        let mut rng = rand::rng();
        let clear = result([0.99, 0.01, 0.0, 0.0, 0.0]);
        let drift = SamplingRules {
            drift_fraction: 1.0,
            ..rules()
        };
        assert_eq!(
            drift.choose(&m, &clear, true, &mut rng),
            Some(CaptureReason::Drift)
        );
        assert_eq!(drift.choose(&m, &clear, false, &mut rng), None);
        let random = SamplingRules {
            random_fraction: 0.25,
            ..rules()
        };
        let kept = (0..4000)
            .filter(|_| random.choose(&m, &clear, false, &mut rng).is_some())
            .count();
        // 1000 expected; 5 standard deviations is about 137.
        assert!((850..=1150).contains(&kept), "{kept} of 4000 kept at 25 %");
    }
}
