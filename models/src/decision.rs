//! The decision rule: from class scores to pass or reject.
//!
//! This module owns turning a model's scores into a [`Decision`] with the per-class reject
//! thresholds of the manifest, and combining the scores of several tiles into one frame score.
//! The rule itself is written down in `models/MANIFEST.md`.

use crate::manifest::Manifest;

/// What happens to the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The part is good.
    Pass,
    /// The part has a defect and must be ejected.
    Reject,
}

/// The classifier's decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Pass or reject.
    pub verdict: Verdict,
    /// Index of the decided class in the manifest's labels.
    pub class: usize,
    /// Score of the decided class, 0 to 1.
    pub confidence: f32,
}

/// The thresholds of one manifest, indexed by class.
#[derive(Debug, Clone)]
pub struct DecisionRule {
    /// Reject threshold per class; `None` for classes that are not defects.
    thresholds: Vec<Option<f32>>,
}

impl DecisionRule {
    /// Builds the rule of a validated manifest.
    pub fn new(manifest: &Manifest) -> Self {
        let out = &manifest.output;
        let thresholds = out
            .labels
            .iter()
            .map(|label| {
                if out.defects.contains(label) {
                    out.reject_threshold.get(label).copied()
                } else {
                    None
                }
            })
            .collect();
        DecisionRule { thresholds }
    }

    /// Whether class `index` is a defect class.
    pub fn is_defect(&self, index: usize) -> bool {
        matches!(self.thresholds.get(index), Some(Some(_)))
    }

    /// Combines per-tile scores: a defect class takes its highest score over the tiles, any
    /// other class its lowest.
    pub fn combine_tiles(&self, tiles: &[Vec<f32>]) -> Vec<f32> {
        let classes = self.thresholds.len();
        (0..classes)
            .map(|c| {
                let scores = tiles.iter().filter_map(|t| t.get(c).copied());
                if self.is_defect(c) {
                    scores.fold(f32::NEG_INFINITY, f32::max)
                } else {
                    scores.fold(f32::INFINITY, f32::min)
                }
            })
            .collect()
    }

    /// Decides on one frame's scores (one per class, in label order).
    pub fn decide(&self, scores: &[f32]) -> Decision {
        let rejected = self
            .thresholds
            .iter()
            .zip(scores)
            .enumerate()
            .filter(|(_, (threshold, score))| threshold.is_some_and(|t| **score >= t))
            .max_by(|a, b| a.1.1.total_cmp(b.1.1));
        if let Some((class, (_, &score))) = rejected {
            return Decision {
                verdict: Verdict::Reject,
                class,
                confidence: score,
            };
        }
        let (class, confidence) = scores
            .iter()
            .enumerate()
            .filter(|(c, _)| !self.is_defect(*c))
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or((0, 0.0), |(c, &s)| (c, s));
        Decision {
            verdict: Verdict::Pass,
            class,
            confidence,
        }
    }
}

/// Softmax over one row of logits, numerically stable.
pub fn softmax(logits: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        for v in logits.iter_mut() {
            *v /= sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> DecisionRule {
        // good, scratch, dent with thresholds 0.5 and 0.3
        DecisionRule {
            thresholds: vec![None, Some(0.5), Some(0.3)],
        }
    }

    #[test]
    fn defect_at_threshold_rejects() {
        let d = rule().decide(&[0.2, 0.5, 0.3]);
        assert_eq!(d.verdict, Verdict::Reject);
        assert_eq!(d.class, 1, "the higher-scoring candidate wins");
    }

    #[test]
    fn a_low_threshold_class_can_reject_when_another_scores_higher() {
        let d = rule().decide(&[0.45, 0.2, 0.35]);
        assert_eq!((d.verdict, d.class), (Verdict::Reject, 2));
        assert_eq!(d.confidence, 0.35);
    }

    #[test]
    fn below_every_threshold_passes_as_best_good_class() {
        let d = rule().decide(&[0.6, 0.25, 0.15]);
        assert_eq!((d.verdict, d.class, d.confidence), (Verdict::Pass, 0, 0.6));
    }

    #[test]
    fn tiles_take_worst_case() {
        let combined = rule().combine_tiles(&[vec![0.9, 0.05, 0.05], vec![0.3, 0.6, 0.1]]);
        assert_eq!(combined, vec![0.3, 0.6, 0.1]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[2] > v[1] && v[1] > v[0]);
    }
}
