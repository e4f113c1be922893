//! The drift detector on the statistics of 4000 held-out frames (`models/testdata/drift/`):
//! what the real preprocessing and the shipped model made of frames rendered like the
//! training data, as rendered (`normal.csv`) and under poor lighting (`dark.csv`), compared
//! with the shipped bundle's own baseline at the default settings.
//!
//! These tests state the detector's two figures: its false-alarm rate on a long run of normal
//! frames, and its delay, in frames, from the lighting failing to drift being raised.

use defect_agent::monitor::drift::{DriftDetector, DriftSettings, Feature, FrameStats};
use defect_models::Manifest;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

fn frames(file: &str) -> Vec<FrameStats> {
    let path = repo().join("models/testdata/drift").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let number = |i: usize| -> f32 {
                fields[i]
                    .parse()
                    .unwrap_or_else(|e| panic!("{}: {line:?}: {e}", path.display()))
            };
            FrameStats {
                brightness: number(2),
                contrast: number(3),
                defect_score: number(4),
                rejected: fields[5] == "reject",
            }
        })
        .collect()
}

fn detector() -> DriftDetector {
    let path = repo().join("models/shipped/manifest.toml");
    let text = std::fs::read_to_string(&path).expect("shipped manifest");
    let manifest = Manifest::from_toml(&text).expect("manifest parses");
    // Every feature: the fixture has the class mix of the baseline.
    let settings = DriftSettings {
        features: Feature::ALL.to_vec(),
        ..DriftSettings::default()
    };
    DriftDetector::new(&manifest.baseline, settings)
}

#[test]
fn four_thousand_normal_frames_raise_no_drift_at_the_default_settings() {
    let normal = frames("normal.csv");
    assert_eq!(normal.len(), 4000);
    let mut detector = detector();
    let mut evaluations = 0;
    let mut worst = 0.0f64;
    for frame in &normal {
        if let Some(report) = detector.observe(frame) {
            evaluations += 1;
            worst = worst.max(report.worst().map_or(0.0, |w| w.1));
            assert!(!report.drifting, "false alarm: {report:?}");
        }
    }
    // Window 200, an evaluation every 10 frames: (4000 - 200) / 10 + 1.
    assert_eq!(evaluations, 381);
    eprintln!("normal: {evaluations} evaluations, 0 raised, highest PSI {worst:.3}");
    // Well below the limit of 0.25, not merely under it.
    assert!(worst < 0.125, "highest PSI {worst}");
}

#[test]
fn poor_lighting_raises_drift_within_60_frames_and_clears_after_the_window_once_it_is_fixed() {
    let normal = frames("normal.csv");
    let dark = frames("dark.csv");
    let mut detector = detector();
    for frame in &normal[..1000] {
        detector.observe(frame);
    }
    assert!(!detector.drifting());
    let raised_after = dark[1000..]
        .iter()
        .position(|frame| detector.observe(frame).is_some_and(|r| r.drifting))
        .map(|i| i + 1)
        .expect("drift never raised");
    eprintln!("dark: drift raised after {raised_after} frames");
    assert!(
        raised_after <= 60,
        "raised after {raised_after} dark frames"
    );
    // Keep the dark frames coming a while, then restore the lighting.
    for frame in &dark[1000 + raised_after..1500] {
        detector.observe(frame);
    }
    assert!(detector.drifting());
    let cleared_after = normal[2000..]
        .iter()
        .position(|frame| detector.observe(frame).is_some_and(|r| !r.drifting))
        .map(|i| i + 1)
        .expect("drift never cleared");
    eprintln!("fixed: drift cleared after {cleared_after} frames");
    assert!(
        (150..=210).contains(&cleared_after),
        "cleared after {cleared_after} normal frames (window 200)"
    );
}

#[test]
fn a_hundred_thousand_frames_resampled_from_the_normal_ones_raise_no_drift() {
    use rand::{Rng, SeedableRng};
    let normal = frames("normal.csv");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut detector = detector();
    let mut evaluations = 0u64;
    let mut raised = 0u64;
    let mut worst = 0.0f64;
    for _ in 0..100_000 {
        let frame = &normal[rng.random_range(0..normal.len())];
        if let Some(report) = detector.observe(frame) {
            evaluations += 1;
            raised += u64::from(report.changed && report.drifting);
            worst = worst.max(report.worst().map_or(0.0, |w| w.1));
        }
    }
    eprintln!("resampled: {evaluations} evaluations, {raised} raised, highest PSI {worst:.3}");
    assert_eq!(evaluations, 9981);
    assert_eq!(raised, 0, "false alarms; highest PSI {worst}");
}
