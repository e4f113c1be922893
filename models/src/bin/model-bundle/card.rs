//! `card`: a bundle's model card in Markdown.

use std::path::PathBuf;

use anyhow::{Context, Result};
use defect_models::Bundle;
use defect_models::card;
use defect_models::evaluation::Evaluation;

use crate::Outcome;
use crate::output::print;

/// Arguments of `card`.
#[derive(clap::Args)]
pub struct Args {
    /// The bundle.
    bundle: PathBuf,
    /// A report written by `model-bundle evaluate --out FILE` (or `--json`) on held-out frames.
    #[arg(long, value_name = "FILE")]
    evaluation: Option<PathBuf>,
    /// Write the card here instead of to standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Runs `card`.
pub fn run(args: Args) -> Result<Outcome> {
    let bundle = Bundle::open(&args.bundle).with_context(|| args.bundle.display().to_string())?;
    let evaluation: Option<Evaluation> = match &args.evaluation {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a report of model-bundle evaluate --json",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let text = card::render(&bundle, evaluation.as_ref());
    match &args.out {
        Some(out) => {
            std::fs::write(out, &text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            print(&format!("wrote {}\n", out.display()));
        }
        None => print(&text),
    }
    Ok(Outcome::Success)
}
