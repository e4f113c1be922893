//! `defect-agent`: the edge inference daemon's command line.
//!
//! The central receiver of captured frames is `defect-central capture-server`; the old
//! `defect-agent capture-server` still runs it for one release, with a deprecation message.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use defect_agent::config::Config;
use defect_agent::serving::ModelSource;
use defect_agent::{capture, classify, daemon, demo, embedded};
use defect_models::{Bundle, gate};
use defect_shared::config_report::EXIT_CONFIG;
use defect_shared::error_chain;
use defect_shared::forward;
use defect_shared::logging::init as init_logging;

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
    /// Run the daemon: take frames, decide, publish over MQTT.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Serve this bundle file instead of the model store or the shipped bundle.
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// Check a configuration file and report every problem; exit 78 if it has any.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the whole path on this machine with an embedded broker and the sample frames.
    Demo {
        /// Folder with sample frames and their labels.csv.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Seconds to wait for all decisions.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
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
        /// Decode every JPEG at full size instead of a reduced DCT scale (except for a model
        /// trained on DCT-scaled decodes, `jpeg_decode = "scaled"`, which always gets them).
        #[arg(long)]
        full_decode: bool,
    },
    /// Copy the captured frames into a new folder: one folder per decided class, plus
    /// captured.csv with every frame's metadata and scores.
    CaptureExport {
        /// Configuration file whose capture store is exported.
        #[arg(long, short, conflicts_with = "store")]
        config: Option<PathBuf>,
        /// The capture store folder itself.
        #[arg(long)]
        store: Option<PathBuf>,
        /// New or empty folder to export into.
        #[arg(long)]
        to: PathBuf,
    },
    /// Deprecated: runs `defect-central capture-server` with the same arguments.
    #[command(hide = true, disable_help_flag = true)]
    CaptureServer {
        /// Arguments for `defect-central capture-server`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, bundle } => {
            init_logging("info");
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("defect-agent: {}", error_chain::chain(&err));
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let model = match (bundle, &config.agent.model_store) {
                (Some(path), _) => ModelSource::File(path),
                (None, Some(store)) => ModelSource::Store(store.clone()),
                (None, None) => ModelSource::Shipped,
            };
            exit_with(runtime().and_then(|rt| {
                rt.block_on(async {
                    // Listen before anything starts, so a SIGTERM during start-up is a clean stop.
                    let shutdown = shutdown_signal().context("cannot listen for SIGTERM")?;
                    daemon::run(config, model, shutdown, None)
                        .await
                        .context("defect-agent")
                })
            }))
        }
        Command::CheckConfig { config } => match Config::load(&config).and_then(|parsed| {
            let problems = parsed.path_problems();
            problems.into_result(parsed).map_err(|problems| {
                defect_agent::config::ConfigError::Invalid {
                    path: config.clone(),
                    problems,
                }
            })
        }) {
            Ok(parsed) => {
                defect_shared::outln!(
                    "{}: ok ({} station(s), broker {}:{}, topics under {})",
                    config.display(),
                    parsed.stations.len(),
                    parsed.mqtt.host,
                    parsed.mqtt.port,
                    parsed.mqtt.topic_prefix
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("defect-agent: {}", error_chain::chain(&err));
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo { samples, timeout } => {
            // The embedded broker logs every readiness probe as an error; its failures end the demo.
            init_logging("warn,rumqttd=off");
            let options = demo::DemoOptions {
                samples: samples.unwrap_or_else(demo::default_samples),
                timeout: std::time::Duration::from_secs(timeout),
            };
            exit_with(runtime().and_then(|rt| rt.block_on(demo::run(options))))
        }
        Command::Classify {
            files,
            bundle,
            json,
            full_decode,
        } => {
            let model = match load_model(bundle.as_deref()) {
                Ok(model) => model,
                Err(err) => {
                    eprintln!("defect-agent: error: {}", error_chain::line(err.chain()));
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
                // The reader went away (`defect-agent classify … | head`): nothing to say.
                Err(err) if defect_shared::output::is_broken_pipe(&err) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("defect-agent: error: {}", error_chain::chain(&err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::CaptureExport { config, store, to } => {
            init_logging("warn");
            exit_with(capture_export(config, store, &to))
        }
        Command::CaptureServer { args } => {
            forward::to_central("defect-agent", "capture-server", &args)
        }
    }
}

fn capture_export(
    config: Option<PathBuf>,
    store: Option<PathBuf>,
    to: &std::path::Path,
) -> Result<()> {
    let store = match (config, store) {
        (_, Some(store)) => store,
        (Some(config), None) => Config::load(&config)?.capture_dir(),
        (None, None) => anyhow::bail!("give --config FILE or --store DIR"),
    };
    let summary = capture::export::export(&store, to)
        .with_context(|| format!("exporting {}", store.display()))?;
    defect_shared::outln!(
        "{} frame(s) from {} exported to {} (index {})",
        summary.images,
        store.display(),
        to.display(),
        summary.csv.display()
    );
    Ok(())
}

fn exit_with(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("defect-agent: error: {}", error_chain::line(err.chain()));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Registers for SIGTERM and SIGINT now; the returned future resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("interrupt received"),
        }
    })
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
