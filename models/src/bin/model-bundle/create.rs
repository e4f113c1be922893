//! `create`: a bundle from an ONNX file, a manifest of decisions, and images for the numbers.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use defect_models::compose::{self, ComposeInputs, ComposeReport, DEFAULT_GOLDEN_PER_LABEL};
use defect_models::draft::ManifestDraft;
use defect_models::figures::{confusion_table, percent};
use defect_models::gate;
use defect_models::model_input::DecodeMode;
use defect_models::scoring::ScoringOptions;

use crate::Outcome;
use crate::inspect::gate_report;
use crate::output::print;

/// Arguments of `create`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifest (TOML): what a person decides; see models/MANIFEST.md. Golden sample paths
    /// in it are relative to it.
    #[arg(long)]
    manifest: PathBuf,
    /// The ONNX model.
    #[arg(long)]
    onnx: PathBuf,
    /// Where to write the bundle.
    #[arg(long)]
    out: PathBuf,
    /// Golden images, files or folders (one sub-folder per label, or flat); repeatable. Their
    /// expected scores are computed. Without any, the first images per label of --validation.
    #[arg(long = "golden", value_name = "PATH")]
    golden: Vec<PathBuf>,
    /// Golden images taken per label from a labelled folder.
    #[arg(long, default_value_t = DEFAULT_GOLDEN_PER_LABEL, value_name = "N")]
    golden_per_label: usize,
    /// Validation frames as the camera delivers them (one folder per label, or a file,label
    /// CSV): the reject thresholds for output.target_recall, the operating point and the drift
    /// baseline are computed on them.
    #[arg(long, value_name = "DATA")]
    validation: Option<PathBuf>,
    /// Decode validation JPEGs at full size (for an agent run with dct_scaling = false).
    #[arg(long)]
    full_decode: bool,
    /// Threads running the model on validation frames.
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Write the bundle even if it fails the validation gate.
    #[arg(long)]
    no_verify: bool,
}

/// Runs `create`.
pub fn run(args: Args) -> Result<Outcome> {
    let draft = ManifestDraft::from_file(&args.manifest)?;
    let mut scoring = ScoringOptions::default();
    if args.full_decode {
        scoring.mode = DecodeMode::Full;
    }
    if let Some(jobs) = args.jobs {
        scoring.jobs = jobs.max(1);
    }
    let inputs = ComposeInputs {
        manifest_path: args.manifest.clone(),
        draft,
        onnx_path: args.onnx.clone(),
        golden: args.golden.clone(),
        golden_per_label: args.golden_per_label,
        validation: args.validation.clone(),
        scoring,
        created: created_now()?,
    };
    let (bundle, report) = compose::compose(&inputs)?;
    let mut text = describe(&bundle, &report);
    if !args.no_verify {
        let (_, gate) = gate::validate(&bundle)
            .with_context(|| format!("bundle from {} refused", args.manifest.display()))?;
        text.push_str(&gate_report(&gate));
    }
    bundle
        .write_to(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let _ = writeln!(
        text,
        "wrote {} ({} bytes) sha256 {}",
        args.out.display(),
        bundle.bytes().len(),
        bundle.digest()
    );
    print(&text);
    Ok(Outcome::Success)
}

/// The creation time: `SOURCE_DATE_EPOCH` when set (reproducible builds), else now; UTC.
fn created_now() -> Result<String> {
    let timestamp = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => {
            let seconds: i64 = value
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH {value:?} is not whole seconds"))?;
            jiff::Timestamp::from_second(seconds)
                .with_context(|| format!("SOURCE_DATE_EPOCH {value:?} is out of range"))?
        }
        Err(_) => jiff::Timestamp::now(),
    };
    Ok(timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn describe(bundle: &defect_models::Bundle, report: &ComposeReport) -> String {
    let m = bundle.manifest();
    let mut out = String::new();
    for (file, error) in &report.unreadable {
        let _ = writeln!(out, "warning: validation frame {file} not counted: {error}");
    }
    for warning in &report.thin_support {
        let _ = writeln!(out, "warning: {warning}");
    }
    for (file, label, decided) in &report.golden_misdecided {
        let _ = writeln!(
            out,
            "warning: golden sample {file} is labelled {label} but the model decides {decided}"
        );
    }
    let thresholds: Vec<String> = m
        .output
        .reject_threshold
        .iter()
        .map(|(label, t)| {
            let how = if report.computed_thresholds.contains(label) {
                "computed"
            } else {
                "as written"
            };
            format!("{label} >= {t} ({how})")
        })
        .collect();
    let _ = writeln!(out, "reject when   {}", thresholds.join(", "));
    if let Some(f) = &report.operating_point {
        let target = m
            .operating_point
            .as_ref()
            .and_then(|op| op.target_recall.as_ref())
            .map(|t| {
                format!(
                    " (wanted recall {})",
                    serde_json::to_string(t).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "operating point on {} labelled validation frames{target}:",
            f.frames
        );
        let _ = writeln!(
            out,
            "  defect recall {} ({} escape(s)), false-reject rate {} ({} of {} good), pass/reject accuracy {}",
            percent(f.defect_recall),
            f.escapes,
            percent(f.false_reject_rate),
            f.false_rejects,
            f.good_frames,
            percent(Some(f.pass_reject_accuracy))
        );
        for line in confusion_table(&report.labels, &f.confusion).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "golden        {} sample(s), expected scores {}",
        report.golden_count,
        if m.validation.golden.is_empty() {
            "none"
        } else {
            "recorded"
        }
    );
    let _ = writeln!(
        out,
        "baseline      {} frames, reject rate {:.4} ({})",
        m.baseline.frames,
        m.baseline.reject_rate,
        if report.baseline_computed {
            "computed"
        } else {
            "as written"
        }
    );
    out
}
