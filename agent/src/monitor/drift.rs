//! Data drift: live input and prediction statistics against the baseline in the bundle.
//!
//! This module owns the drift arithmetic, free of I/O and clocks: the baseline's histograms
//! regrouped into bins that each hold a fair share of the baseline's frames, a sliding window
//! of the last frames' statistics, and the population stability index (PSI) of each feature
//! between the window and the baseline. Features: the model input's brightness and contrast,
//! the highest defect-class score, and the reject rate. A [`DriftDetector`] raises drift when
//! any feature's PSI reaches `psi_alarm` in a full window, and clears it only once every
//! feature is back below `psi_clear` (hysteresis, so a window near the limit does not flap).

use std::collections::VecDeque;

use defect_models::manifest::{Baseline, Histogram};

pub use crate::outcome::FrameStats;

/// The features compared against the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Mean pixel value of the model input.
    Brightness,
    /// Pixel standard deviation of the model input.
    Contrast,
    /// Highest defect-class score.
    DefectScore,
    /// Share of frames rejected.
    RejectRate,
}

impl Feature {
    /// Every feature, in report order.
    pub const ALL: [Feature; 4] = [
        Feature::Brightness,
        Feature::Contrast,
        Feature::DefectScore,
        Feature::RejectRate,
    ];

    /// snake_case name, as used in configuration, metrics and MQTT payloads.
    pub const fn name(self) -> &'static str {
        match self {
            Feature::Brightness => "brightness",
            Feature::Contrast => "contrast",
            Feature::DefectScore => "defect_score",
            Feature::RejectRate => "reject_rate",
        }
    }

    /// The feature of a name.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    fn value(self, stats: &FrameStats) -> f64 {
        match self {
            Feature::Brightness => f64::from(stats.brightness),
            Feature::Contrast => f64::from(stats.contrast),
            Feature::DefectScore => f64::from(stats.defect_score),
            Feature::RejectRate => f64::from(u8::from(stats.rejected)),
        }
    }
}

/// Drift settings: window, cadence and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftSettings {
    /// Frames in the sliding window.
    pub window: usize,
    /// Frames between two evaluations of a full window.
    pub every: usize,
    /// PSI at or above which a feature drifts.
    pub psi_alarm: f64,
    /// PSI every feature must be below for drift to clear.
    pub psi_clear: f64,
    /// Features compared; by default the input's brightness and contrast, which do not
    /// depend on the line's class mix.
    pub features: Vec<Feature>,
    /// Smallest share of the baseline's frames a regrouped bin holds.
    pub min_bin_share: f64,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            window: 200,
            every: 10,
            psi_alarm: 0.25,
            psi_clear: 0.1,
            features: vec![Feature::Brightness, Feature::Contrast],
            min_bin_share: 0.1,
        }
    }
}

/// The result of one evaluation of a full window.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftReport {
    /// PSI per compared feature, in the settings' order.
    pub psi: Vec<(Feature, f64)>,
    /// Drift is raised (after this evaluation).
    pub drifting: bool,
    /// Drift was raised or cleared by this evaluation.
    pub changed: bool,
    /// Frames in the window.
    pub frames: usize,
    /// Frames observed since the detector started (since its bundle went into service).
    pub seen: u64,
}

impl DriftReport {
    /// The feature with the highest PSI, and that PSI.
    pub fn worst(&self) -> Option<(Feature, f64)> {
        self.psi.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// A baseline histogram regrouped into bins that each hold at least a minimum share of the
/// baseline's frames; values below or above the histogram fall into the end bins.
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    /// Upper edges of every bin but the last.
    edges: Vec<f64>,
    /// The baseline's share per bin, smoothed so none is zero.
    expected: Vec<f64>,
}

impl Bins {
    /// Regroups `histogram` so that each bin holds at least `min_share` of its frames.
    pub fn from_histogram(histogram: &Histogram, min_share: f64) -> Bins {
        let total: u64 = histogram.counts.iter().sum();
        let n = histogram.counts.len().max(1);
        let width = (histogram.max - histogram.min) / n as f64;
        let mut edges = Vec::new();
        let mut counts = Vec::new();
        let mut running = 0u64;
        for (i, count) in histogram.counts.iter().enumerate() {
            running += count;
            let last = i + 1 == histogram.counts.len();
            if !last && (running as f64) >= min_share * total as f64 {
                edges.push(histogram.min + width * (i + 1) as f64);
                counts.push(running);
                running = 0;
            }
        }
        // What is left joins the last bin; a remainder below the share merges into it.
        match counts.last_mut() {
            Some(last) if (running as f64) < min_share * total as f64 => {
                *last += running;
                edges.pop();
            }
            _ => counts.push(running),
        }
        Bins {
            expected: smoothed_shares(&counts),
            edges,
        }
    }

    /// The two bins of a yes/no feature with a baseline rate of `rate`.
    pub fn binary(rate: f64, frames: u64) -> Bins {
        let yes = (rate.clamp(0.0, 1.0) * frames as f64).round() as u64;
        Bins {
            edges: vec![0.5],
            expected: smoothed_shares(&[frames.saturating_sub(yes), yes]),
        }
    }

    /// Number of bins.
    pub fn len(&self) -> usize {
        self.expected.len()
    }

    /// Whether there are no bins (never, for a built `Bins`).
    pub fn is_empty(&self) -> bool {
        self.expected.is_empty()
    }

    /// The bin a value falls into.
    pub fn index(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge <= value)
    }

    /// PSI of observed bin counts against the baseline shares.
    pub fn psi(&self, counts: &[u64]) -> f64 {
        let observed = smoothed_shares(counts);
        observed
            .iter()
            .zip(&self.expected)
            .map(|(o, e)| (o - e) * (o / e).ln())
            .sum()
    }
}

/// Shares per bin with half a frame added to each, so no share is zero.
fn smoothed_shares(counts: &[u64]) -> Vec<f64> {
    let total = counts.iter().sum::<u64>() as f64 + 0.5 * counts.len() as f64;
    counts.iter().map(|c| (*c as f64 + 0.5) / total).collect()
}

/// One feature's baseline bins and the window's counts per bin.
#[derive(Debug, Clone)]
struct Tracked {
    feature: Feature,
    bins: Bins,
    counts: Vec<u64>,
}

/// Compares a sliding window of live frames with one bundle's baseline.
#[derive(Debug, Clone)]
pub struct DriftDetector {
    settings: DriftSettings,
    tracked: Vec<Tracked>,
    /// Bin index per tracked feature of each frame in the window, oldest first.
    window: VecDeque<Vec<usize>>,
    since_evaluation: usize,
    seen: u64,
    drifting: bool,
}

impl DriftDetector {
    /// A detector for the bundle whose baseline is `baseline`.
    pub fn new(baseline: &Baseline, settings: DriftSettings) -> DriftDetector {
        let tracked = settings
            .features
            .iter()
            .map(|&feature| {
                let bins = match feature {
                    Feature::Brightness => {
                        Bins::from_histogram(&baseline.brightness, settings.min_bin_share)
                    }
                    Feature::Contrast => {
                        Bins::from_histogram(&baseline.contrast, settings.min_bin_share)
                    }
                    Feature::DefectScore => {
                        Bins::from_histogram(&baseline.defect_score, settings.min_bin_share)
                    }
                    Feature::RejectRate => Bins::binary(baseline.reject_rate, baseline.frames),
                };
                Tracked {
                    feature,
                    counts: vec![0; bins.len()],
                    bins,
                }
            })
            .collect();
        DriftDetector {
            window: VecDeque::with_capacity(settings.window + 1),
            settings,
            tracked,
            since_evaluation: 0,
            seen: 0,
            drifting: false,
        }
    }

    /// Whether drift is raised.
    pub fn drifting(&self) -> bool {
        self.drifting
    }

    /// Adds a frame; returns a report when a full window is due for evaluation.
    pub fn observe(&mut self, stats: &FrameStats) -> Option<DriftReport> {
        let indices: Vec<usize> = self
            .tracked
            .iter_mut()
            .map(|t| {
                let index = t.bins.index(t.feature.value(stats));
                t.counts[index] += 1;
                index
            })
            .collect();
        self.window.push_back(indices);
        if self.window.len() > self.settings.window
            && let Some(oldest) = self.window.pop_front()
        {
            for (t, index) in self.tracked.iter_mut().zip(oldest) {
                t.counts[index] -= 1;
            }
        }
        self.since_evaluation += 1;
        self.seen += 1;
        if self.window.len() < self.settings.window || self.since_evaluation < self.settings.every {
            return None;
        }
        self.since_evaluation = 0;
        Some(self.evaluate())
    }

    fn evaluate(&mut self) -> DriftReport {
        let psi: Vec<(Feature, f64)> = self
            .tracked
            .iter()
            .map(|t| (t.feature, t.bins.psi(&t.counts)))
            .collect();
        let before = self.drifting;
        if psi.iter().any(|(_, v)| *v >= self.settings.psi_alarm) {
            self.drifting = true;
        } else if psi.iter().all(|(_, v)| *v < self.settings.psi_clear) {
            self.drifting = false;
        }
        DriftReport {
            psi,
            drifting: self.drifting,
            changed: before != self.drifting,
            frames: self.window.len(),
            seen: self.seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(min: f64, max: f64, counts: &[u64]) -> Histogram {
        Histogram {
            min,
            max,
            counts: counts.to_vec(),
        }
    }

    fn baseline() -> Baseline {
        Baseline {
            frames: 1000,
            brightness: histogram(0.0, 256.0, &[0, 100, 300, 400, 200, 0, 0, 0]),
            contrast: histogram(0.0, 128.0, &[0, 500, 500, 0]),
            defect_score: histogram(0.0, 1.0, &[800, 0, 0, 200]),
            reject_rate: 0.2,
        }
    }

    #[test]
    fn bins_hold_a_minimum_share_and_cover_the_whole_line() {
        let bins = Bins::from_histogram(&histogram(0.0, 8.0, &[1, 1, 1, 50, 1, 30, 10, 6]), 0.1);
        // 1+1+1+50 | 1+30 | 10+6
        assert_eq!(bins.edges, vec![4.0, 6.0]);
        assert_eq!(bins.index(-5.0), 0);
        assert_eq!(bins.index(3.99), 0);
        assert_eq!(bins.index(4.0), 1);
        assert_eq!(bins.index(100.0), 2);
        let sum: f64 = bins.expected.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn psi_is_zero_for_the_baseline_itself_and_grows_with_the_shift() {
        let bins = Bins::from_histogram(&histogram(0.0, 4.0, &[250, 250, 250, 250]), 0.05);
        assert!(bins.psi(&[250, 250, 250, 250]).abs() < 1e-12);
        let small = bins.psi(&[300, 250, 250, 200]);
        let large = bins.psi(&[700, 200, 50, 50]);
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 0.25, "{large}");
    }

    fn frame(brightness: f32, rejected: bool) -> FrameStats {
        FrameStats {
            brightness,
            contrast: 40.0,
            defect_score: if rejected { 0.95 } else { 0.01 },
            rejected,
        }
    }

    fn settings() -> DriftSettings {
        DriftSettings {
            window: 100,
            every: 10,
            features: Feature::ALL.to_vec(),
            ..DriftSettings::default()
        }
    }

    /// Frames whose statistics follow `baseline()` exactly, in a fixed interleaving.
    fn baseline_like(i: usize) -> FrameStats {
        let brightness = [
            40.0, 70.0, 70.0, 70.0, 100.0, 100.0, 100.0, 100.0, 140.0, 140.0,
        ];
        let contrast = if i.is_multiple_of(2) { 40.0 } else { 70.0 };
        FrameStats {
            contrast,
            ..frame(brightness[i % 10], i.is_multiple_of(5))
        }
    }

    #[test]
    fn nothing_is_reported_before_the_window_is_full_then_every_n_frames() {
        let mut detector = DriftDetector::new(&baseline(), settings());
        let reports: Vec<usize> = (0..150)
            .filter(|&i| detector.observe(&baseline_like(i)).is_some())
            .collect();
        assert_eq!(reports, vec![99, 109, 119, 129, 139, 149]);
    }

    #[test]
    fn frames_like_the_baseline_never_drift() {
        let mut detector = DriftDetector::new(&baseline(), settings());
        for i in 0_usize..2000 {
            if let Some(report) = detector.observe(&baseline_like(i)) {
                assert!(!report.drifting, "{report:?}");
            }
        }
    }

    #[test]
    fn dark_frames_raise_drift_and_it_clears_with_hysteresis_once_they_are_gone() {
        let mut detector = DriftDetector::new(&baseline(), settings());
        for i in 0_usize..100 {
            detector.observe(&baseline_like(i));
        }
        let mut raised_after = None;
        for i in 0_usize..100 {
            let dark = FrameStats {
                brightness: 20.0,
                ..baseline_like(i)
            };
            if let Some(report) = detector.observe(&dark)
                && report.changed
            {
                assert!(report.drifting);
                assert_eq!(report.worst().map(|w| w.0), Some(Feature::Brightness));
                raised_after = Some(i + 1);
                break;
            }
        }
        let raised_after = raised_after.expect("drift never raised");
        assert!(
            raised_after <= 30,
            "raised after {raised_after} dark frames"
        );
        let mut cleared_after = None;
        for i in 0_usize..300 {
            if let Some(report) = detector.observe(&baseline_like(i))
                && report.changed
            {
                assert!(!report.drifting);
                cleared_after = Some(i + 1);
                break;
            }
        }
        let cleared_after = cleared_after.expect("drift never cleared");
        assert!(
            (50..=100).contains(&cleared_after),
            "cleared after {cleared_after} normal frames"
        );
    }

    #[test]
    fn a_reject_rate_far_from_the_baseline_drifts_on_its_own() {
        let settings = DriftSettings {
            features: vec![Feature::RejectRate],
            ..settings()
        };
        let mut detector = DriftDetector::new(&baseline(), settings);
        let mut last = None;
        for i in 0_usize..100 {
            last = detector
                .observe(&frame(100.0, !i.is_multiple_of(5)))
                .or(last);
        }
        let report = last.expect("a report");
        assert!(report.drifting, "{report:?}");
        assert_eq!(report.psi.len(), 1);
    }
}
