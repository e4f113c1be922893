//! The figures that judge a classifier on the line: pass/reject accuracy, defect recall, false
//! rejects, per-class recall and precision, and the confusion matrix.
//!
//! This module owns the arithmetic from (true label, scores) pairs to [`Figures`] under one
//! [`DecisionRule`], and the list of a model's worst misses. It knows nothing of files or
//! models; [`crate::scoring`] produces its input.

use serde::{Deserialize, Serialize};

use crate::decision::{DecisionRule, Verdict};

/// Recall and precision of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    /// The class label.
    pub label: String,
    /// Whether the class is a defect.
    pub defect: bool,
    /// Frames whose true label is this class.
    pub frames: u64,
    /// Share of those frames decided as this class; `None` without frames.
    pub recall: Option<f64>,
    /// Share of frames decided as this class that truly are; `None` when none was.
    pub precision: Option<f64>,
}

/// How a classifier did on labelled frames under one set of thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Frames counted (labelled and scored).
    pub frames: u64,
    /// Of them, frames whose true label is a defect.
    pub defect_frames: u64,
    /// Of them, frames whose true label is not a defect.
    pub good_frames: u64,
    /// Share of frames whose pass/reject verdict is right.
    pub pass_reject_accuracy: f64,
    /// Share of frames decided as exactly their true class.
    pub class_accuracy: f64,
    /// Share of defect frames rejected; `None` without defect frames.
    pub defect_recall: Option<f64>,
    /// Share of good frames rejected; `None` without good frames.
    pub false_reject_rate: Option<f64>,
    /// Share of all frames rejected.
    pub reject_rate: f64,
    /// Defect frames passed: the escapes.
    pub escapes: u64,
    /// Good frames rejected.
    pub false_rejects: u64,
    /// Per class, in label order.
    pub per_class: Vec<ClassFigures>,
    /// Counts by true class (rows) and decided class (columns), in label order.
    pub confusion: Vec<Vec<u64>>,
}

/// A frame the classifier got wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    /// The image's name in the set.
    pub file: String,
    /// Its true label.
    pub label: String,
    /// The decided class.
    pub decided: String,
    /// `escape` (a defect passed), `false_reject` (a good part rejected) or `wrong_class`
    /// (rejected, but as another defect).
    pub kind: MissKind,
    /// Score of the decided class.
    pub confidence: f32,
    /// Score of the true class.
    pub true_score: f32,
}

/// What kind of mistake a [`Miss`] is, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissKind {
    /// A defect was passed.
    Escape,
    /// A good part was rejected.
    FalseReject,
    /// A defect was rejected as another defect.
    WrongClass,
}

impl Figures {
    /// The headline figures as (name, value) rows, in the order reports print them.
    pub fn summary_rows(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "frames",
                format!(
                    "{} ({} defect, {} good)",
                    self.frames, self.defect_frames, self.good_frames
                ),
            ),
            (
                "pass/reject accuracy",
                percent(Some(self.pass_reject_accuracy)),
            ),
            (
                "defect recall",
                format!(
                    "{} ({} escape(s))",
                    percent(self.defect_recall),
                    self.escapes
                ),
            ),
            (
                "false-reject rate",
                format!(
                    "{} ({} good part(s) rejected)",
                    percent(self.false_reject_rate),
                    self.false_rejects
                ),
            ),
            ("class accuracy", percent(Some(self.class_accuracy))),
        ]
    }
}

/// A share as a percentage with two decimals; `n/a` when it cannot be measured.
pub fn percent(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{:.2} %", v * 100.0))
}

/// Figures of `frames` (true class index, scores) under `rule`.
pub fn figures<'a>(
    labels: &[String],
    rule: &DecisionRule,
    frames: impl IntoIterator<Item = (usize, &'a [f32])>,
) -> Figures {
    let n = labels.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let (mut total, mut defects, mut escapes, mut false_rejects, mut rejects) = (0, 0, 0, 0, 0);
    let mut right_verdict = 0u64;
    for (truth, scores) in frames {
        if truth >= n {
            continue;
        }
        let decision = rule.decide(scores);
        total += 1;
        if let Some(row) = confusion.get_mut(truth)
            && let Some(cell) = row.get_mut(decision.class)
        {
            *cell += 1;
        }
        let is_defect = rule.is_defect(truth);
        let rejected = decision.verdict == Verdict::Reject;
        defects += u64::from(is_defect);
        rejects += u64::from(rejected);
        right_verdict += u64::from(is_defect == rejected);
        escapes += u64::from(is_defect && !rejected);
        false_rejects += u64::from(!is_defect && rejected);
    }
    let share = |a: u64, b: u64| {
        if b == 0 {
            None
        } else {
            Some(a as f64 / b as f64)
        }
    };
    let per_class = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let actual: u64 = confusion[i].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[i]).sum();
            ClassFigures {
                label: label.clone(),
                defect: rule.is_defect(i),
                frames: actual,
                recall: share(confusion[i][i], actual),
                precision: share(confusion[i][i], predicted),
            }
        })
        .collect();
    let diagonal: u64 = (0..n).map(|i| confusion[i][i]).sum();
    Figures {
        frames: total,
        defect_frames: defects,
        good_frames: total - defects,
        pass_reject_accuracy: share(right_verdict, total).unwrap_or(0.0),
        class_accuracy: share(diagonal, total).unwrap_or(0.0),
        defect_recall: share(defects - escapes, defects),
        false_reject_rate: share(false_rejects, total - defects),
        reject_rate: share(rejects, total).unwrap_or(0.0),
        escapes,
        false_rejects,
        per_class,
        confusion,
    }
}

/// Every frame decided as another class than its true one, worst first: escapes, then false
/// rejects, then defects rejected as another defect, each by falling confidence.
pub fn misses<'a>(
    labels: &[String],
    rule: &DecisionRule,
    frames: impl IntoIterator<Item = (&'a str, usize, &'a [f32])>,
) -> Vec<Miss> {
    let mut misses: Vec<Miss> = frames
        .into_iter()
        .filter_map(|(file, truth, scores)| {
            let decision = rule.decide(scores);
            if decision.class == truth || truth >= labels.len() {
                return None;
            }
            let kind = match (rule.is_defect(truth), decision.verdict) {
                (true, Verdict::Pass) => MissKind::Escape,
                (false, Verdict::Reject) => MissKind::FalseReject,
                (true, Verdict::Reject) => MissKind::WrongClass,
                (false, Verdict::Pass) => return None,
            };
            Some(Miss {
                file: file.to_owned(),
                label: labels[truth].clone(),
                decided: labels.get(decision.class).cloned().unwrap_or_default(),
                kind,
                confidence: decision.confidence,
                true_score: scores.get(truth).copied().unwrap_or(0.0),
            })
        })
        .collect();
    misses.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then(b.confidence.total_cmp(&a.confidence))
            .then(a.file.cmp(&b.file))
    });
    misses
}

/// The confusion matrix as an aligned text table, rows true class, columns decided class.
pub fn confusion_table(labels: &[String], confusion: &[Vec<u64>]) -> String {
    let width = labels.iter().map(String::len).max().unwrap_or(4).max(6) + 1;
    let mut out = format!("{:>width$}", "true \\ decided");
    let first = width.max("true \\ decided".len());
    out = format!("{:<first$}", out.trim_start());
    for label in labels {
        out.push_str(&format!("{label:>width$}"));
    }
    out.push('\n');
    for (label, row) in labels.iter().zip(confusion) {
        out.push_str(&format!("{label:<first$}"));
        for count in row {
            out.push_str(&format!("{count:>width$}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{EXAMPLE, Manifest};

    fn rule() -> (Vec<String>, DecisionRule) {
        let m = Manifest::from_toml(EXAMPLE).expect("example");
        (m.output.labels.clone(), DecisionRule::new(&m))
    }

    #[test]
    fn figures_count_escapes_and_false_rejects() {
        let (labels, rule) = rule();
        // good, scratch; threshold 0.5 on scratch.
        let frames: Vec<(usize, Vec<f32>)> = vec![
            (0, vec![0.9, 0.1]),
            (0, vec![0.4, 0.6]), // false reject
            (1, vec![0.2, 0.8]),
            (1, vec![0.7, 0.3]), // escape
            (1, vec![0.1, 0.9]),
        ];
        let f = figures(
            &labels,
            &rule,
            frames.iter().map(|(t, s)| (*t, s.as_slice())),
        );
        assert_eq!((f.frames, f.defect_frames, f.good_frames), (5, 3, 2));
        assert_eq!((f.escapes, f.false_rejects), (1, 1));
        assert_eq!(f.defect_recall, Some(2.0 / 3.0));
        assert_eq!(f.false_reject_rate, Some(0.5));
        assert!((f.pass_reject_accuracy - 0.6).abs() < 1e-12);
        assert_eq!(f.confusion, vec![vec![1, 1], vec![1, 2]]);
        assert_eq!(f.per_class[1].precision, Some(2.0 / 3.0));
        let named: Vec<(String, usize, Vec<f32>)> = frames
            .iter()
            .enumerate()
            .map(|(i, (t, s))| (format!("f{i}"), *t, s.clone()))
            .collect();
        let m = misses(
            &labels,
            &rule,
            named.iter().map(|(n, t, s)| (n.as_str(), *t, s.as_slice())),
        );
        let kinds: Vec<(&str, MissKind)> = m.iter().map(|m| (m.file.as_str(), m.kind)).collect();
        assert_eq!(
            kinds,
            [("f3", MissKind::Escape), ("f1", MissKind::FalseReject)]
        );
    }
}
