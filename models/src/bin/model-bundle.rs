//! `model-bundle`: create, inspect and verify model bundles.
//!
//! Wraps a classifier exported from any training pipeline (PyTorch, TensorFlow, scikit-learn
//! through ONNX) with a hand-written manifest into one `.dmb` file that the updater publishes
//! and the agent serves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use defect_models::{Bundle, gate};

#[derive(Parser)]
#[command(
    name = "model-bundle",
    version,
    about = "Create, inspect and verify defect-agent model bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bundle from an ONNX file and a TOML manifest, then verify it.
    Create {
        /// Hand-written manifest (TOML); golden sample paths are relative to it.
        #[arg(long)]
        manifest: PathBuf,
        /// The ONNX model.
        #[arg(long)]
        onnx: PathBuf,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        /// Write the bundle even if it fails the validation gate.
        #[arg(long)]
        no_verify: bool,
    },
    /// Print what a bundle holds.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        /// Print the full manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle's integrity and run its validation gate (golden samples, latency).
    Verify {
        /// The bundle file.
        bundle: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("model-bundle: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create {
            manifest,
            onnx,
            out,
            no_verify,
        } => {
            let bundle = Bundle::create_from_files(&manifest, &onnx)
                .with_context(|| format!("cannot create a bundle from {}", manifest.display()))?;
            if !no_verify {
                let (_, report) = gate::validate(&bundle)
                    .with_context(|| format!("bundle from {} refused", manifest.display()))?;
                print_report(&report);
            }
            bundle.write_to(&out)?;
            println!(
                "wrote {} ({} bytes) sha256 {}",
                out.display(),
                bundle.bytes().len(),
                bundle.digest()
            );
            Ok(())
        }
        Command::Inspect { bundle: path, json } => {
            let bundle = Bundle::open(&path).with_context(|| format!("{}", path.display()))?;
            if json {
                print!(
                    "{}",
                    String::from_utf8_lossy(&bundle.manifest().to_canonical_json())
                );
            } else {
                print_summary(&path, &bundle);
            }
            Ok(())
        }
        Command::Verify { bundle: path } => {
            let bundle = Bundle::open(&path).with_context(|| format!("{}", path.display()))?;
            let (_, report) =
                gate::validate(&bundle).with_context(|| format!("{} refused", path.display()))?;
            print_report(&report);
            println!(
                "{}: OK ({} sha256 {})",
                path.display(),
                bundle.manifest().name,
                bundle.digest()
            );
            Ok(())
        }
    }
}

fn print_report(report: &gate::GateReport) {
    for g in &report.golden {
        println!("golden {:<28} max |diff| {:.5}", g.file, g.max_abs_diff);
    }
    println!(
        "median inference {:.2} ms (budget {} ms)",
        report.median_inference_ms, report.latency_budget_ms
    );
}

fn print_summary(path: &std::path::Path, bundle: &Bundle) {
    let m = bundle.manifest();
    let pre = &m.preprocess;
    println!("bundle        {}", path.display());
    println!("sha256        {}", bundle.digest());
    println!(
        "size          {} bytes (model {} bytes)",
        bundle.bytes().len(),
        bundle.model().len()
    );
    println!(
        "name          {} {} (model_version {})",
        m.name, m.version, m.model_version
    );
    if !m.description.is_empty() {
        println!("description   {}", m.description);
    }
    println!(
        "format        {} (needs defect-agent >= {})",
        m.format_version, m.min_agent_version
    );
    println!(
        "input         {:?} {:?} {:?} {:?}{}",
        m.input.shape,
        m.input.layout,
        m.input.color,
        m.input.dtype,
        m.input
            .tensor
            .as_ref()
            .map(|t| format!(" tensor {t:?}"))
            .unwrap_or_default()
    );
    println!(
        "preprocess    resize {:?}, scale {}, mean {:?}, std {:?}{}{}",
        pre.resize,
        pre.scale,
        pre.mean,
        pre.std,
        pre.roi
            .map(|r| format!(", roi {}x{}+{}+{}", r.width, r.height, r.x, r.y))
            .unwrap_or_default(),
        pre.tiles
            .map(|t| format!(", tiles {}x{}", t.rows, t.cols))
            .unwrap_or_default()
    );
    println!("output        {:?} {:?}", m.output.kind, m.output.labels);
    let thresholds: Vec<String> = m
        .output
        .reject_threshold
        .iter()
        .map(|(label, t)| format!("{label} >= {t}"))
        .collect();
    println!("reject when   {}", thresholds.join(", "));
    println!(
        "validation    {} golden sample(s), tolerance {}, latency budget {} ms",
        m.validation.golden.len(),
        m.validation.tolerance,
        m.validation.latency_budget_ms
    );
    println!(
        "baseline      {} frames, reject rate {:.3}",
        m.baseline.frames, m.baseline.reject_rate
    );
    println!("dataset       {}", m.provenance.dataset);
    println!("trained by    {}", m.provenance.training_script);
    if let Some(rev) = &m.provenance.source_revision {
        println!("revision      {rev}");
    }
}
