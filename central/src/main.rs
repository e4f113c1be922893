//! `defect-central`: the central server's command line.
//!
//! `capture-server` receives the frames edge boxes upload; `repo` creates, publishes to and
//! maintains the signed model repository (init, add-target, resign-timestamp, rotate-key).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use defect_central::{publish, receiver};

/// Central-server tools for defect-agent fleets.
#[derive(Parser)]
#[command(name = "defect-central", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive the frames edge boxes capture and upload, one folder per station.
    CaptureServer {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Folder the frames are stored in, one folder per station.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create, publish to and maintain a signed model repository.
    #[command(subcommand)]
    Repo(publish::RepoCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    defect_shared::logging::init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("defect-central: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::CaptureServer { listen, dir } => receiver::run(&listen, &dir).await?,
            Command::Repo(command) => command.run().await?,
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("defect-central: {error:#}");
            ExitCode::FAILURE
        }
    }
}
