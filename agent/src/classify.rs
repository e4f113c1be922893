//! `defect-agent classify FILE...`: decide on image files once, without the daemon.
//!
//! This module owns the one-shot command: it validates the bundle through the gate, classifies
//! each file, and prints the decision, class, confidence and stage timings per file, as text
//! or as one JSON object per line (which also carries the model input's brightness and
//! contrast). A file that cannot be read or decoded is reported with its name and the reason,
//! and the others are still classified.

use std::io::Write;
use std::path::{Path, PathBuf};

use defect_models::{Classification, Classifier, Model, Verdict};
use defect_shared::error_chain::chain;
use serde::Serialize;

/// Options of the classify command.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Print JSON lines instead of text.
    pub json: bool,
    /// Decode large JPEGs at a reduced DCT scale.
    pub dct_scaling: bool,
}

/// Outcome of one file, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct FileOutcome {
    /// The file as given on the command line.
    pub file: String,
    /// `pass`, `reject` or `error`.
    pub result: &'static str,
    /// Decided class label (absent on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Score of the decided class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Score per label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<serde_json::Map<String, serde_json::Value>>,
    /// Statistics of the model input, as the drift monitor sees them (absent on error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSummary>,
    /// Stage timings in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings_ms: Option<StageTimes>,
    /// Why the file could not be classified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Statistics of the model input image (after resize, before normalisation), on the 0-255
/// scale: the per-frame values the drift monitor compares against the bundle's baseline.
#[derive(Debug, Serialize)]
pub struct InputSummary {
    /// Mean pixel value.
    pub brightness: f64,
    /// Pixel standard deviation.
    pub contrast: f64,
}

/// Stage timings in milliseconds.
#[derive(Debug, Serialize)]
pub struct StageTimes {
    /// Reading the file from disk.
    pub read: f64,
    /// Image decoding.
    pub decode: f64,
    /// Resize and normalisation.
    pub preprocess: f64,
    /// Model run.
    pub inference: f64,
    /// All of the above.
    pub total: f64,
}

/// Classifies every file, prints one line per file to `out`, and returns how many failed.
pub fn run(
    model: &std::sync::Arc<Model>,
    files: &[PathBuf],
    options: &ClassifyOptions,
    out: &mut impl Write,
) -> std::io::Result<usize> {
    let mut classifier = match model.classifier() {
        Ok(c) => c,
        Err(e) => {
            writeln!(out, "cannot start classifier: {}", chain(&e))?;
            return Ok(files.len());
        }
    };
    classifier.set_decode_options(defect_models::DecodeOptions::default(), options.dct_scaling);
    let mut failed = 0;
    for file in files {
        let outcome = classify_file(&mut classifier, file);
        if outcome.error.is_some() {
            failed += 1;
        }
        if options.json {
            serde_json::to_writer(&mut *out, &outcome)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", text_line(&outcome))?;
        }
    }
    Ok(failed)
}

fn classify_file(classifier: &mut Classifier, file: &Path) -> FileOutcome {
    let start = std::time::Instant::now();
    let name = file.display().to_string();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return error_outcome(name, format!("cannot read: {e}")),
    };
    let read = start.elapsed();
    match classifier.classify_bytes(&bytes) {
        Ok(result) => success_outcome(name, classifier.model(), &result, read),
        Err(e) => error_outcome(name, chain(&e)),
    }
}

fn success_outcome(
    file: String,
    model: &Model,
    result: &Classification,
    read: std::time::Duration,
) -> FileOutcome {
    let labels = &model.manifest().output.labels;
    let ms = |d: std::time::Duration| round(d.as_secs_f64() * 1000.0, 3);
    let t = &result.timings;
    FileOutcome {
        file,
        result: match result.decision.verdict {
            Verdict::Pass => "pass",
            Verdict::Reject => "reject",
        },
        class: labels.get(result.decision.class).cloned(),
        confidence: Some(round(f64::from(result.decision.confidence), 5)),
        scores: Some(
            labels
                .iter()
                .zip(&result.scores)
                .map(|(l, s)| (l.clone(), serde_json::json!(round(f64::from(*s), 5))))
                .collect(),
        ),
        input: Some(InputSummary {
            brightness: round(f64::from(result.input.brightness), 3),
            contrast: round(f64::from(result.input.contrast), 3),
        }),
        timings_ms: Some(StageTimes {
            read: ms(read),
            decode: ms(t.decode),
            preprocess: ms(t.preprocess),
            inference: ms(t.inference),
            total: ms(read + t.total()),
        }),
        error: None,
    }
}

/// Rounds to `digits` decimals, so printed values carry no float noise.
fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

fn error_outcome(file: String, error: String) -> FileOutcome {
    FileOutcome {
        file,
        result: "error",
        class: None,
        confidence: None,
        scores: None,
        input: None,
        timings_ms: None,
        error: Some(error),
    }
}

fn text_line(o: &FileOutcome) -> String {
    match (&o.error, &o.timings_ms) {
        (Some(error), _) => format!("{}  ERROR  {error}", o.file),
        (None, Some(t)) => format!(
            "{}  {:<6}  {:<10} conf {:.3}  decode {:.1} ms  preprocess {:.1} ms  inference {:.1} ms  total {:.1} ms",
            o.file,
            o.result.to_uppercase(),
            o.class.as_deref().unwrap_or("?"),
            o.confidence.unwrap_or(0.0),
            t.decode,
            t.preprocess,
            t.inference,
            t.total
        ),
        (None, None) => format!("{}  {}", o.file, o.result),
    }
}
