//! An edge box's update side for tests: the real `model-updater` binary with its config, state
//! folder and model store.
//!
//! This module owns [`UpdaterBox`] (config, store seeded with the shipped bundle as `factory`
//! and `current`, one-shot `check` runs, daemon runs that tests may `kill -9`, and readers of
//! the store, the trust record and the status) and [`EdgeLine`] (a box with its broker and
//! agent). The repositories the box updates from are made in [`crate::publisher`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use defect_models::store::{Pointer, Store};
use tempfile::TempDir;

use crate::binary;

/// Settings a test varies.
#[derive(Debug, Clone)]
pub struct BoxSettings {
    /// `…/metadata/` base URL.
    pub metadata_url: String,
    /// `…/targets/` base URL.
    pub targets_url: String,
    /// The root the box ships with.
    pub trusted_root: PathBuf,
    /// The line this box is on.
    pub line: Option<String>,
    /// Its stations.
    pub stations: Vec<String>,
    /// Seconds the agent has to report a new bundle serving.
    pub trial_timeout_s: u64,
    /// Download bandwidth cap in bytes per second (0: none).
    pub max_bytes_per_second: u64,
    /// Extra TOML appended to the config (whole sections).
    pub extra: String,
    /// Where the updater's state folder goes (default: in the box's temporary folder).
    pub state_dir: Option<PathBuf>,
    /// Where the model store goes (default: in the box's temporary folder).
    pub store_dir: Option<PathBuf>,
}

impl BoxSettings {
    /// Settings for a repository served at `base` (`http://host:port/`) or a `file://` URL.
    pub fn new(base: &str, trusted_root: &Path) -> BoxSettings {
        let base = base.trim_end_matches('/');
        BoxSettings {
            metadata_url: format!("{base}/metadata/"),
            targets_url: format!("{base}/targets/"),
            trusted_root: trusted_root.to_owned(),
            line: Some("line3".into()),
            stations: vec!["cam1".into()],
            trial_timeout_s: 60,
            max_bytes_per_second: 0,
            extra: String::new(),
            state_dir: None,
            store_dir: None,
        }
    }
}

/// One box's updater: folders, config and the binary.
#[derive(Debug)]
pub struct UpdaterBox {
    dir: TempDir,
    /// The updater's state folder.
    pub state_dir: PathBuf,
    /// The model store.
    pub store_dir: PathBuf,
    /// The agent's model health report.
    pub health_file: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// Environment added to every run (e.g. libfaketime).
    pub env: Vec<(String, String)>,
}

impl UpdaterBox {
    /// A box with the shipped bundle as `factory` and `current`.
    pub fn new(settings: &BoxSettings) -> UpdaterBox {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = settings
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("updater"));
        let store_dir = settings
            .store_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("models"));
        let health_file = dir.path().join("agent/model-health.json");
        std::fs::create_dir_all(dir.path().join("agent")).expect("agent dir");
        let store = Store::open(&store_dir).expect("store");
        let shipped = std::fs::read(crate::shipped_bundle()).expect("shipped bundle");
        let sha = store.add(&shipped).expect("add shipped");
        store.set_pointer(Pointer::Factory, &sha).expect("factory");
        store.set_pointer(Pointer::Current, &sha).expect("current");
        let config = dir.path().join("model-updater.toml");
        let stations = settings
            .stations
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let line = settings
            .line
            .as_ref()
            .map(|l| format!("line = {l:?}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"[repository]
metadata_url = {metadata:?}
targets_url = {targets:?}
trusted_root = {root:?}

[box]
model = "surface-classifier"
{line}stations = [{stations}]

[paths]
state_dir = {state:?}
model_store = {store:?}

[poll]
interval_s = 3600
jitter_s = 0

[download]
attempts = 4
backoff_initial_ms = 50
backoff_max_ms = 400
stall_timeout_s = 5
free_space_margin_bytes = 0
max_bytes_per_second = {rate}

[trial]
health_file = {health:?}
timeout_s = {timeout}
max_attempts = 3
{extra}"#,
            metadata = settings.metadata_url,
            targets = settings.targets_url,
            root = settings.trusted_root.display().to_string(),
            state = state_dir.display().to_string(),
            store = store_dir.display().to_string(),
            health = health_file.display().to_string(),
            timeout = settings.trial_timeout_s,
            rate = settings.max_bytes_per_second,
            extra = settings.extra,
        );
        std::fs::write(&config, text).expect("config");
        UpdaterBox {
            dir,
            state_dir,
            store_dir,
            health_file,
            config,
            env: Vec::new(),
        }
    }

    /// Appends whole sections to the config file (e.g. `[mqtt]` once the broker's port is
    /// known).
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).expect("config");
        config.push('\n');
        config.push_str(text);
        std::fs::write(&self.config, config).expect("config");
    }

    /// The box's temporary folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `model-updater` command with this box's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("model-updater"));
        command.args(args).env("RUST_LOG", "info");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs `model-updater check` once and returns its output.
    pub fn check(&self) -> Output {
        let config = self.config.display().to_string();
        self.command(&["check", "--config", &config])
            .output()
            .expect("run model-updater check")
    }

    /// Runs `model-updater install-from PATH` once and returns its output.
    pub fn install_from(&self, repo: &Path) -> Output {
        let config = self.config.display().to_string();
        let repo = repo.display().to_string();
        self.command(&["install-from", &repo, "--config", &config])
            .output()
            .expect("run model-updater install-from")
    }

    /// Starts `model-updater <args…> --config FILE` in the background, output to `log`.
    pub fn spawn(&self, command: &str, log: &Path) -> Child {
        let config = self.config.display().to_string();
        let out = std::fs::File::create(log).expect("log");
        let err = out.try_clone().expect("log");
        self.command(&[command, "--config", &config])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn model-updater")
    }

    /// The store (read side).
    pub fn store(&self) -> Store {
        Store::at(&self.store_dir)
    }

    /// `(sha256, model_version)` of the bundle `current` names; the bundle is read and checked
    /// in full (digest and manifest).
    pub fn current(&self) -> (String, u64) {
        let bundle = self
            .store()
            .load(Pointer::Current)
            .expect("current must name a complete, valid bundle")
            .expect("current must exist");
        (bundle.digest().to_owned(), bundle.manifest().model_version)
    }

    /// The updater's status document, if written.
    pub fn status(&self) -> Option<serde_json::Value> {
        read_json(&self.state_dir.join("status.json"))
    }

    /// The updater's state (trial, bad versions), if written.
    pub fn state(&self) -> Option<serde_json::Value> {
        read_json(&self.state_dir.join("updater-state.json"))
    }

    /// The anti-rollback record, if written.
    pub fn floor(&self) -> Option<serde_json::Value> {
        read_json(&self.state_dir.join("trust/floor.json"))
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Standard error of a finished run, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Replaces a served folder's content with `from` (the test server reads files per request).
pub fn serve_instead(served: &Path, from: &Path) {
    std::fs::remove_dir_all(served).expect("clear served folder");
    copy_dir(from, served);
}

/// Whether none of the server's requests from index `from` on fetched a target.
pub fn no_target_download_since(server: &crate::repo_server::RepoServer, from: usize) -> bool {
    server.requests()[from..]
        .iter()
        .all(|r| !r.path.starts_with("/targets/"))
}

/// Environment that runs a process under libfaketime (`offset` as `FAKETIME` reads it), with
/// the monotonic clock left alone.
pub fn faketime(offset: &str) -> Vec<(String, String)> {
    let library = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime is not installed (Debian package faketime; .ci/run installs it)");
    vec![
        ("LD_PRELOAD".into(), library.into()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Describes a finished `model-updater` run for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A whole box: a broker, the real agent serving from the box's model store and writing its
/// model health report, a subscriber on the agent's retained `model` topic, and the updater.
pub struct EdgeLine {
    /// The broker.
    pub broker: crate::broker::Mosquitto,
    /// The agent.
    pub agent: crate::agent_process::AgentProcess,
    /// A subscriber to everything the agent publishes.
    pub plc: crate::subscriber::Subscriber,
    /// The updater side.
    pub edge: UpdaterBox,
}

impl EdgeLine {
    /// Starts broker and agent for a new box; returns once the agent serves model_version 1.
    pub fn start(settings: &BoxSettings) -> EdgeLine {
        let broker = crate::broker::Mosquitto::start();
        let edge = UpdaterBox::new(settings);
        let mut agent_settings = crate::agent_process::AgentSettings::new(broker.port);
        agent_settings.model_store = Some(edge.store_dir.clone());
        agent_settings.model_health_file = Some(edge.health_file.clone());
        let plc = crate::subscriber::Subscriber::start(
            broker.port,
            &format!("{}/#", agent_settings.prefix),
            crate::subscriber::Version::V5,
        );
        let agent = crate::agent_process::AgentProcess::start(agent_settings);
        let line = EdgeLine {
            broker,
            agent,
            plc,
            edge,
        };
        line.wait_for_served_version(1);
        line
    }

    /// The model_version the agent last announced on its retained `model` topic.
    pub fn served_version(&self) -> Option<u64> {
        self.plc
            .messages()
            .iter()
            .rev()
            .find(|m| m.topic.ends_with("/model"))
            .and_then(|m| m.json()["mv"].as_u64())
    }

    /// Waits until the agent announces `version` (panics with its log and the updater's
    /// `updater_log` after a minute).
    pub fn wait_for_served_version_logging(&self, version: u64, updater_log: &Path) {
        self.wait_served(version, Some(updater_log));
    }

    /// Waits until the agent announces `version` (panics with its log after a minute).
    pub fn wait_for_served_version(&self, version: u64) {
        self.wait_served(version, None);
    }

    fn wait_served(&self, version: u64, updater_log: Option<&Path>) {
        let served = |m: &[crate::subscriber::Received]| {
            m.iter()
                .rev()
                .find(|m| m.topic.ends_with("/model"))
                .is_some_and(|m| m.json()["mv"] == version)
        };
        assert!(
            self.plc
                .wait_until(std::time::Duration::from_secs(60), served),
            "agent never served model_version {version}; updater log:\n{}\nagent log:\n{}",
            updater_log
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_else(|| "(not kept by this test)".to_owned()),
            self.agent.log()
        );
    }
}
