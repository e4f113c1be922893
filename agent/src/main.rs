//! `defect-agent`: the edge inference daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use defect_agent::{classify, embedded};
use defect_models::{Bundle, gate};

#[derive(Parser)]
#[command(
    name = "defect-agent",
    version,
    about = "Edge defect detection: frames in, a decision for every part out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files once and print a decision per file.
    ///
    /// Exit status: 0 when every file was classified, 1 when any file could not be,
    /// 2 when the model bundle was refused.
    Classify {
        /// JPEG, PNG or BMP files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Model bundle to use instead of the shipped one.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Print one JSON object per file.
        #[arg(long)]
        json: bool,
        /// Decode every JPEG at full size instead of a reduced DCT scale.
        #[arg(long)]
        full_decode: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Classify {
            files,
            bundle,
            json,
            full_decode,
        } => {
            let model = match load_model(bundle.as_deref()) {
                Ok(model) => model,
                Err(err) => {
                    eprintln!("defect-agent: error: {err:#}");
                    return ExitCode::from(2);
                }
            };
            let options = classify::ClassifyOptions {
                json,
                dct_scaling: !full_decode,
            };
            let mut stdout = std::io::stdout().lock();
            match classify::run(&model, &files, &options, &mut stdout) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("defect-agent: error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads and validates the given bundle, or the shipped one.
fn load_model(path: Option<&std::path::Path>) -> Result<std::sync::Arc<defect_models::Model>> {
    let (bundle, origin) = match path {
        Some(path) => (
            Bundle::open(path).with_context(|| format!("{}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            embedded::shipped_bundle().context("shipped bundle")?,
            "shipped bundle".to_owned(),
        ),
    };
    let (model, _) = gate::validate(&bundle).with_context(|| format!("{origin} refused"))?;
    Ok(model)
}
