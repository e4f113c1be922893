//! `model-updater`: signed model updates for defect-agent.

use clap::Parser;

/// Signed model updates for defect-agent.
#[derive(Parser)]
#[command(name = "model-updater", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("model-updater {}: no commands yet", model_updater::VERSION);
    std::process::exit(64);
}
