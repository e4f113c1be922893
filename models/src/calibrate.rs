//! Numbers a bundle needs that are measured, not decided: reject thresholds for a wanted
//! defect recall, and the drift baseline.
//!
//! This module owns choosing reject thresholds on labelled validation frames and building the
//! baseline histograms (`models/MANIFEST.md`, `[baseline]`) from scored frames. It works on
//! scores already computed by [`crate::scoring`]; it reads no files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decision::{DecisionRule, Verdict};
use crate::manifest::{Baseline, Histogram};
use crate::preprocess::InputStats;

/// Bins of the brightness histogram, over 0-256.
pub const BRIGHTNESS_BINS: usize = 32;
/// Bins of the contrast histogram, over 0-128.
pub const CONTRAST_BINS: usize = 32;
/// Bins of the highest-defect-score histogram, over 0-1.
pub const DEFECT_SCORE_BINS: usize = 20;

/// The defect recall a person wants: one figure for all defects together, or one per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecallTarget {
    /// Share of all defect frames that must be rejected.
    Overall(f64),
    /// Per defect label, the share of its frames that must be rejected.
    PerClass(BTreeMap<String, f64>),
}

/// Why thresholds could not be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrateError {
    /// A defect label has neither an explicit threshold nor a recall target.
    #[error(
        "output.reject_threshold.{0}: is missing; set it, or set output.target_recall and give labelled --validation frames"
    )]
    NoTarget(String),
    /// Thresholds must be computed but no labelled validation frame has the classes needed.
    #[error("output.target_recall: needs labelled validation frames of {0}, and there are none")]
    NoFrames(String),
    /// A recall target outside (0, 1].
    #[error("output.target_recall{key}: {value} must be in (0, 1]")]
    BadTarget {
        /// `""` or `.<label>`.
        key: String,
        /// The value given.
        value: f64,
    },
}

/// Chooses every defect label's reject threshold.
///
/// Explicit thresholds are kept. The others are set as high as possible while the wanted recall
/// is still met on `frames` (true class index, scores), which keeps false rejects as low as that
/// recall allows:
/// - with an overall target, the labels without an explicit threshold share one threshold,
///   chosen so that the share of defect frames rejected (by any class) reaches the target;
/// - with a per-class target, each such label gets the threshold at which its own score rejects
///   that share of its own frames.
pub fn choose_thresholds(
    labels: &[String],
    defects: &[String],
    explicit: &BTreeMap<String, f32>,
    target: Option<&RecallTarget>,
    frames: &[(usize, &[f32])],
) -> Result<BTreeMap<String, f32>, CalibrateError> {
    let mut chosen: BTreeMap<String, f32> = defects
        .iter()
        .filter_map(|d| explicit.get(d).map(|t| (d.clone(), *t)))
        .collect();
    let free: Vec<&String> = defects
        .iter()
        .filter(|d| !explicit.contains_key(*d))
        .collect();
    if free.is_empty() {
        return Ok(chosen);
    }
    let index = |label: &str| labels.iter().position(|l| l == label);
    match target {
        None => return Err(CalibrateError::NoTarget(free[0].clone())),
        Some(RecallTarget::Overall(recall)) => {
            check_target("", *recall)?;
            let defect_indices: Vec<usize> = defects.iter().filter_map(|d| index(d)).collect();
            let fixed: Vec<(usize, f32)> = chosen
                .iter()
                .filter_map(|(d, t)| index(d).map(|i| (i, *t)))
                .collect();
            let free_indices: Vec<usize> = free.iter().filter_map(|d| index(d)).collect();
            let mut covered = 0usize;
            let mut needed_scores = Vec::new();
            let mut defect_frames = 0usize;
            for (truth, scores) in frames {
                if !defect_indices.contains(truth) {
                    continue;
                }
                defect_frames += 1;
                let by_fixed = fixed
                    .iter()
                    .any(|(i, t)| scores.get(*i).is_some_and(|s| s >= t));
                if by_fixed {
                    covered += 1;
                } else {
                    let best = free_indices
                        .iter()
                        .filter_map(|i| scores.get(*i).copied())
                        .fold(0.0f32, f32::max);
                    needed_scores.push(best);
                }
            }
            if defect_frames == 0 {
                return Err(CalibrateError::NoFrames("any defect label".into()));
            }
            let threshold =
                threshold_for(&mut needed_scores, quota(*recall, defect_frames), covered);
            for d in free {
                chosen.insert(d.clone(), threshold);
            }
        }
        Some(RecallTarget::PerClass(targets)) => {
            for (key, value) in targets {
                check_target(&format!(".{key}"), *value)?;
            }
            for d in free {
                let recall = *targets
                    .get(d)
                    .ok_or_else(|| CalibrateError::NoTarget(d.clone()))?;
                let Some(i) = index(d) else { continue };
                let mut own: Vec<f32> = frames
                    .iter()
                    .filter(|(truth, _)| *truth == i)
                    .filter_map(|(_, s)| s.get(i).copied())
                    .collect();
                if own.is_empty() {
                    return Err(CalibrateError::NoFrames(format!("{d:?}")));
                }
                let count = own.len();
                chosen.insert(d.clone(), threshold_for(&mut own, quota(recall, count), 0));
            }
        }
    }
    Ok(chosen)
}

fn check_target(key: &str, value: f64) -> Result<(), CalibrateError> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(CalibrateError::BadTarget {
            key: key.to_owned(),
            value,
        })
    }
}

/// How many of `count` frames a recall of `recall` needs, rounded up.
fn quota(recall: f64, count: usize) -> usize {
    let exact = recall * count as f64;
    // Guard against 0.995 * 200 = 199.00000000000003.
    (exact - 1e-9).ceil().max(0.0) as usize
}

/// Most a threshold sits below the borderline frame's score, so that another runtime or CPU
/// scoring that frame a few units in the last place lower still rejects it.
pub const THRESHOLD_MARGIN: f32 = 0.001;

/// The threshold at which at least `needed - covered` of `scores` reach it: just below the
/// borderline score (by [`THRESHOLD_MARGIN`], or half the gap to the next lower score when that
/// is smaller); 1.0 when none need to. Kept within (0, 1], as reject thresholds are.
fn threshold_for(scores: &mut [f32], needed: usize, covered: usize) -> f32 {
    let more = needed.saturating_sub(covered);
    if more == 0 || scores.is_empty() {
        return 1.0;
    }
    scores.sort_by(|a, b| b.total_cmp(a));
    let index = more.min(scores.len()) - 1;
    let borderline = scores[index];
    let next = scores.get(index + 1).copied().unwrap_or(0.0);
    let gap = (borderline - next) / 2.0;
    let margin = if gap.is_finite() {
        gap.clamp(0.0, THRESHOLD_MARGIN)
    } else {
        0.0
    };
    (borderline - margin).clamp(f32::MIN_POSITIVE, 1.0)
}

/// The drift baseline of scored validation frames under `rule`.
pub fn baseline<'a>(
    rule: &DecisionRule,
    frames: impl IntoIterator<Item = (&'a InputStats, &'a [f32])>,
) -> Baseline {
    let mut brightness = vec![0u64; BRIGHTNESS_BINS];
    let mut contrast = vec![0u64; CONTRAST_BINS];
    let mut defect_score = vec![0u64; DEFECT_SCORE_BINS];
    let (mut count, mut rejected) = (0u64, 0u64);
    for (stats, scores) in frames {
        count += 1;
        bump(&mut brightness, f64::from(stats.brightness), 0.0, 256.0);
        bump(&mut contrast, f64::from(stats.contrast), 0.0, 128.0);
        let highest = scores
            .iter()
            .enumerate()
            .filter(|(i, _)| rule.is_defect(*i))
            .map(|(_, s)| *s)
            .fold(0.0f32, f32::max);
        bump(&mut defect_score, f64::from(highest), 0.0, 1.0);
        rejected += u64::from(rule.decide(scores).verdict == Verdict::Reject);
    }
    let histogram = |min, max, counts| Histogram { min, max, counts };
    Baseline {
        frames: count,
        brightness: histogram(0.0, 256.0, brightness),
        contrast: histogram(0.0, 128.0, contrast),
        defect_score: histogram(0.0, 1.0, defect_score),
        reject_rate: if count == 0 {
            0.0
        } else {
            // Four decimals, as a person would write it.
            (rejected as f64 / count as f64 * 10_000.0).round() / 10_000.0
        },
    }
}

/// Counts `value` in equal-width bins over [min, max); values outside go to the end bins.
fn bump(counts: &mut [u64], value: f64, min: f64, max: f64) {
    let bins = counts.len();
    let position = ((value - min) / (max - min) * bins as f64).floor();
    let index = if position.is_nan() || position < 0.0 {
        0
    } else {
        (position as usize).min(bins - 1)
    };
    counts[index] += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> (Vec<String>, Vec<String>) {
        (
            vec!["good".into(), "scratch".into(), "dent".into()],
            vec!["scratch".into(), "dent".into()],
        )
    }

    fn frames() -> Vec<(usize, Vec<f32>)> {
        let mut out = Vec::new();
        // 10 scratch frames with scratch scores 0.1 .. 1.0; 10 dent frames with dent 0.55 .. 1.0.
        for i in 1..=10 {
            out.push((1, vec![0.0, i as f32 / 10.0, 0.0]));
            out.push((2, vec![0.0, 0.0, 0.5 + i as f32 / 20.0]));
        }
        // Good frames with a scratch score of 0.35.
        for _ in 0..5 {
            out.push((0, vec![0.65, 0.35, 0.0]));
        }
        out
    }

    fn as_refs(frames: &[(usize, Vec<f32>)]) -> Vec<(usize, &[f32])> {
        frames.iter().map(|(t, s)| (*t, s.as_slice())).collect()
    }

    #[test]
    fn overall_target_picks_the_highest_threshold_that_meets_it() {
        let (labels, defects) = labels();
        let frames = frames();
        let target = RecallTarget::Overall(0.9);
        let t = choose_thresholds(
            &labels,
            &defects,
            &BTreeMap::new(),
            Some(&target),
            &as_refs(&frames),
        )
        .expect("chosen");
        // 18 of 20 defect frames must reach it: the 18th highest best-defect score is 0.3, and
        // the threshold sits just below it.
        assert_eq!(t["scratch"], 0.3 - THRESHOLD_MARGIN);
        assert_eq!(t["dent"], 0.3 - THRESHOLD_MARGIN);
    }

    #[test]
    fn explicit_thresholds_win_and_count_towards_the_target() {
        let (labels, defects) = labels();
        let frames = frames();
        let explicit = BTreeMap::from([("dent".to_owned(), 0.5f32)]);
        let target = RecallTarget::Overall(1.0);
        let t = choose_thresholds(
            &labels,
            &defects,
            &explicit,
            Some(&target),
            &as_refs(&frames),
        )
        .expect("chosen");
        assert_eq!(t["dent"], 0.5);
        assert_eq!(t["scratch"], 0.1 - THRESHOLD_MARGIN);
    }

    #[test]
    fn per_class_targets_use_each_class_own_frames() {
        let (labels, defects) = labels();
        let frames = frames();
        let target = RecallTarget::PerClass(BTreeMap::from([
            ("scratch".to_owned(), 0.5),
            ("dent".to_owned(), 1.0),
        ]));
        let t = choose_thresholds(
            &labels,
            &defects,
            &BTreeMap::new(),
            Some(&target),
            &as_refs(&frames),
        )
        .expect("chosen");
        assert_eq!(t["scratch"], 0.6 - THRESHOLD_MARGIN);
        assert_eq!(t["dent"], 0.55 - THRESHOLD_MARGIN);
    }

    #[test]
    fn missing_target_and_frames_are_named() {
        let (labels, defects) = labels();
        let err = choose_thresholds(&labels, &defects, &BTreeMap::new(), None, &[])
            .expect_err("no target");
        assert!(
            err.to_string().contains("reject_threshold.scratch"),
            "{err}"
        );
        let target = RecallTarget::Overall(0.99);
        let err = choose_thresholds(&labels, &defects, &BTreeMap::new(), Some(&target), &[])
            .expect_err("no frames");
        assert!(matches!(err, CalibrateError::NoFrames(_)), "{err}");
        let bad = RecallTarget::Overall(1.5);
        let err = choose_thresholds(&labels, &defects, &BTreeMap::new(), Some(&bad), &[])
            .expect_err("bad target");
        assert!(err.to_string().contains("1.5"), "{err}");
    }

    #[test]
    fn the_margin_is_at_most_half_the_gap_to_the_next_score() {
        let mut scores = vec![0.9, 0.8996, 0.2];
        assert_eq!(threshold_for(&mut scores, 1, 0), 0.9 - 0.0002);
        let mut scores = vec![0.9, 0.9, 0.2];
        assert_eq!(threshold_for(&mut scores, 1, 0), 0.9);
        let mut scores = vec![0.5];
        assert_eq!(threshold_for(&mut scores, 1, 0), 0.5 - THRESHOLD_MARGIN);
    }

    #[test]
    fn rule_of_three() {
        assert_eq!(crate::compose::frames_to_show_recall(0.995), Some(598));
        assert_eq!(crate::compose::frames_to_show_recall(0.99), Some(299));
        assert_eq!(crate::compose::frames_to_show_recall(1.0), None);
    }

    #[test]
    fn quota_rounds_up_without_float_noise() {
        assert_eq!(quota(0.995, 200), 199);
        assert_eq!(quota(0.995, 201), 200);
        assert_eq!(quota(1.0, 7), 7);
    }

    #[test]
    fn histograms_clip_to_the_end_bins() {
        let mut counts = vec![0; 4];
        for v in [-1.0, 0.0, 0.3, 0.99, 1.0, 7.0, f64::NAN] {
            bump(&mut counts, v, 0.0, 1.0);
        }
        assert_eq!(counts, vec![3, 1, 0, 3]);
    }
}
