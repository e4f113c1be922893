//! `model-bundle`: wrap, evaluate, document and check model bundles.
//!
//! Wraps a classifier exported from any training pipeline (PyTorch, TensorFlow, scikit-learn
//! through ONNX) with a manifest of what a person decides into one `.dmb` file that the updater
//! publishes and the agent serves, computing every measured number from images; evaluates
//! bundles on labelled frames with gates for a model CI/CD job; writes model cards; and writes
//! the model-input tensors a training script learns from.
//!
//! Exit codes: 0 success (for `evaluate`: every gate met), 1 a gate not met, 2 an error.

mod card;
mod create;
mod evaluate;
mod inspect;
mod output;
mod tensors;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "model-bundle",
    version,
    about = "Create, evaluate, document and verify defect-agent model bundles",
    after_help = "Exit status: 0 success (evaluate: every gate met), 1 a gate not met, 2 error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bundle from an ONNX file and a manifest, computing golden scores, thresholds,
    /// drift baseline and provenance from images; then run the validation gate on it.
    Create(create::Args),
    /// Measure a bundle on labelled frames: recall, false rejects, confusion, latency, misses;
    /// with gates, exit 1 when one is not met; with --compare, list every flip against another.
    Evaluate(evaluate::Args),
    /// Write a bundle's model card (Markdown), with an evaluation's figures when given.
    Card(card::Args),
    /// Write the model-input tensors of labelled frames as NumPy files, for training.
    Tensors(tensors::Args),
    /// Print what a bundle holds.
    Inspect(inspect::InspectArgs),
    /// Check a bundle's integrity and run its validation gate (golden samples, latency).
    Verify(inspect::VerifyArgs),
}

/// What a command asks the process to exit with.
pub enum Outcome {
    /// Done.
    Success,
    /// A gate was not met.
    GateNotMet,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Create(args) => create::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Card(args) => card::run(args),
        Command::Tensors(args) => tensors::run(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Verify(args) => inspect::verify(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::GateNotMet) => ExitCode::from(1),
        Err(err) => {
            output::error(&err);
            ExitCode::from(2)
        }
    }
}
