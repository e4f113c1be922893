//! `model-updater`: signed model updates for defect-agent.
//!
//! `run` (the daemon), `check` (one cycle), `install-from` (a repository copied onto
//! removable media), `status`, `approve`, `check-config`. Creating and signing the repository is
//! `defect-central repo`; the old `model-updater repo` still runs it for one release, with a
//! deprecation message.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use defect_shared::config_report::EXIT_CONFIG;
use defect_shared::error_chain;
use model_updater::config::Config;
use model_updater::service::{self, Outcome, Updater};
use model_updater::verify::Source;

/// Signed model updates for defect-agent.
#[derive(Parser)]
#[command(name = "model-updater", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the updater daemon: check on an interval and on announcements, install, try, commit
    /// or revert.
    Run {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one update cycle now and exit: 0 up to date or installed, 1 failed, 2 reverted,
    /// 3 repository unreachable.
    Check {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Install from a repository copied into a folder (e.g. a USB stick holding `metadata/`
    /// and `targets/`), with the same verification as online updates. Exit codes as `check`.
    InstallFrom {
        /// The repository folder.
        path: PathBuf,
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the updater's status, trial and bad versions.
    Status {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve the canary candidate running in shadow (with `[canary] approval = "manual"`):
    /// it is promoted once its evidence holds.
    Approve {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Let a version marked bad (or deferred after a latency refusal) be installed again, at
    /// the next check: give its model_version or its bundle SHA-256 (8 hex digits or more).
    ForgetBad {
        /// The model_version or bundle SHA-256 to forget.
        version: String,
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and the files and folders it names, as the user running
    /// it (run it as the service user), and exit (78 when invalid). With the agent's
    /// configuration (by default /etc/defect-agent/defect-agent.toml when it exists), also
    /// check that both name the same health report and model store.
    CheckConfig {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The agent's configuration file, to compare with.
        #[arg(long)]
        agent_config: Option<PathBuf>,
    },
    /// Deprecated: runs `defect-central repo` with the same arguments.
    #[command(hide = true, disable_help_flag = true)]
    Repo {
        /// Arguments for `defect-central repo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Where the packaged agent's configuration lives; `check-config` compares with it when it
/// exists.
const DEFAULT_AGENT_CONFIG: &str = "/etc/defect-agent/defect-agent.toml";

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
            eprintln!("model-updater: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("model-updater: {}", error_chain::line(error.chain()));
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("model-updater: {}", error_chain::chain(&error));
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            service::run(config, shutdown_signal()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let source = match service::configured_source(&config) {
                Ok(source) => source,
                Err(error) => {
                    eprintln!("model-updater: {}", error_chain::chain(&error));
                    return Ok(ExitCode::from(if error.is_offline() { 3 } else { 1 }));
                }
            };
            one_cycle(config, source).await
        }
        Command::InstallFrom { path, config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let source = match Source::local(&path, config.repository.trusted_root.clone()) {
                Ok(source) => source,
                Err(error) => {
                    eprintln!("model-updater: {}", error_chain::chain(&error));
                    return Ok(ExitCode::from(if error.is_offline() { 3 } else { 1 }));
                }
            };
            one_cycle(config, source).await
        }
        Command::Status { config, json } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print_status(&config, json)
        }
        Command::Approve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            approve(&config)
        }
        Command::ForgetBad { version, config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            forget_bad(&config, &version)
        }
        Command::CheckConfig {
            config,
            agent_config,
        } => Ok(match load(&config) {
            Ok(parsed) => {
                let agent_config = agent_config.or_else(|| {
                    let default = PathBuf::from(DEFAULT_AGENT_CONFIG);
                    default.exists().then_some(default)
                });
                let problems = parsed.path_problems(agent_config.as_deref());
                if problems.is_empty() {
                    defect_shared::outln!("{}: ok", config.display());
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "model-updater: config {} has {} problem(s):\n{problems}",
                        config.display(),
                        problems.len()
                    );
                    ExitCode::from(EXIT_CONFIG)
                }
            }
            Err(code) => code,
        }),
        Command::Repo { args } => Ok(defect_shared::forward::to_central(
            "model-updater",
            "repo",
            &args,
        )),
    }
}

async fn one_cycle(config: Config, source: Source) -> anyhow::Result<ExitCode> {
    let mut updater = Updater::open(config)?;
    Ok(match updater.cycle(&source).await {
        Ok(Outcome::UpToDate) => {
            defect_shared::outln!("up to date");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Installed(m)) => {
            defect_shared::outln!(
                "installed {} model_version {} ({})",
                m.model,
                m.model_version,
                m.sha256
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::Reverted { candidate, reason }) => {
            defect_shared::outln!(
                "reverted {} model_version {} ({}): {reason}",
                candidate.model,
                candidate.model_version,
                candidate.sha256
            );
            ExitCode::from(2)
        }
        Err(error) if error.is_offline() => {
            eprintln!("model-updater: {}", error_chain::chain(&error));
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("model-updater: {}", error_chain::chain(&error));
            ExitCode::FAILURE
        }
    })
}

fn print_status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let state_dir = &config.paths.state_dir;
    let status = model_updater::status::read(state_dir).context("cannot read the status")?;
    let Some(status) = status else {
        defect_shared::outln!(
            "no status yet: the updater has not run with state folder {}",
            state_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    if json {
        defect_shared::outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let model = |m: &Option<model_updater::state::ModelRef>| match m {
        Some(m) => format!(
            "{} {} (model_version {}, {})",
            m.model, m.version, m.model_version, m.sha256
        ),
        None => "none".into(),
    };
    let time = |t: Option<u64>| t.map_or("never".into(), model_updater::clock::rfc3339);
    defect_shared::outln!("state:         {:?}", status.state);
    defect_shared::outln!("current:       {}", model(&status.current));
    defect_shared::outln!("pending:       {}", model(&status.pending));
    defect_shared::outln!("last check:    {}", time(status.last_check_ms));
    defect_shared::outln!("last success:  {}", time(status.last_success_ms));
    defect_shared::outln!(
        "last error:    {}",
        status.last_error.as_deref().unwrap_or("none")
    );
    if let Some(warning) = &status.clock_warning {
        defect_shared::outln!("clock:         {warning}");
    }
    for deferred in &status.deferred {
        defect_shared::outln!("deferred:      {deferred}");
    }
    for bad in &status.bad {
        defect_shared::outln!("marked bad:    {bad}");
    }
    if let Some(policy) = &config.canary
        && let Ok(bytes) = std::fs::read(&policy.evidence_file)
        && let Ok(e) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        defect_shared::outln!(
            "canary:        {} model_version {}: {} frames, {} agreed, {} reject->pass, {} pass->reject, {} skipped, median {:.2} ms vs {:.2} ms",
            e["state"].as_str().unwrap_or("?"),
            e["candidate_model_version"],
            e["frames"],
            e["agree"],
            e["reject_to_pass"],
            e["pass_to_reject"],
            e["skipped"],
            e["candidate_ms_p50"].as_f64().unwrap_or(0.0),
            e["current_ms_p50"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn approve(config: &Config) -> anyhow::Result<ExitCode> {
    let state_dir = &config.paths.state_dir;
    let (state, problem) = model_updater::state::StateFile::new(state_dir).load();
    if let Some(problem) = problem {
        return Err(anyhow::Error::new(problem).context("updater state is damaged"));
    }
    let Some(run) = state.canary else {
        eprintln!("model-updater: no canary candidate is running in shadow");
        return Ok(ExitCode::FAILURE);
    };
    let path = model_updater::service::approval_path(state_dir);
    defect_shared::atomic::write(&path, run.candidate.sha256.as_bytes())
        .with_context(|| format!("{}", path.display()))?;
    defect_shared::outln!(
        "approved {} model_version {} ({}): promoted once its evidence holds",
        run.candidate.model,
        run.candidate.model_version,
        run.candidate.sha256
    );
    Ok(ExitCode::SUCCESS)
}

fn forget_bad(config: &Config, version: &str) -> anyhow::Result<ExitCode> {
    let state_dir = &config.paths.state_dir;
    let (state, problem) = model_updater::state::StateFile::new(state_dir).load();
    if let Some(problem) = problem {
        return Err(anyhow::Error::new(problem).context("updater state is damaged"));
    }
    let matches = |sha: &str, model_version: u64| {
        model_updater::service::forget_matches(version, sha, model_version)
    };
    let held: Vec<String> = state
        .bad
        .iter()
        .filter(|(sha, bad)| matches(sha, bad.model_version))
        .map(|(sha, bad)| {
            format!(
                "model_version {} ({sha}), marked bad: {}",
                bad.model_version, bad.reason
            )
        })
        .chain(
            state
                .deferred
                .iter()
                .filter(|(sha, d)| matches(sha, d.model_version))
                .map(|(sha, d)| {
                    format!(
                        "model_version {} ({sha}), deferred: {}",
                        d.model_version, d.reason
                    )
                }),
        )
        .collect();
    if held.is_empty() {
        eprintln!(
            "model-updater: no bad or deferred version matches {version:?} (see `model-updater status`)"
        );
        return Ok(ExitCode::FAILURE);
    }
    let path = model_updater::service::forget_path(state_dir);
    let mut requests = std::fs::read_to_string(&path).unwrap_or_default();
    requests.push_str(version.trim());
    requests.push('\n');
    defect_shared::atomic::write(&path, requests.as_bytes())
        .with_context(|| format!("{}", path.display()))?;
    for line in held {
        defect_shared::outln!("forgetting {line}");
    }
    defect_shared::outln!(
        "applied at the next check (the daemon's next cycle, or `model-updater check`)"
    );
    Ok(ExitCode::SUCCESS)
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
