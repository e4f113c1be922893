//! The updater's configuration file: what it holds, its defaults and its validation.
//!
//! This module owns the TOML schema of `model-updater run --config FILE`. Every field but the
//! repository addresses has a default that is safe on a real box, and [`Config::load`] reports
//! every problem at once, each naming its key, before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use defect_shared::config_report::Problems;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the signed repository is and which root of trust this box started with.
    pub repository: RepositorySection,
    /// Which model this box runs, and for which line and stations.
    #[serde(rename = "box")]
    pub target: BoxSection,
    /// Local folders.
    #[serde(default)]
    pub paths: PathsSection,
    /// How often the repository is checked.
    #[serde(default)]
    pub poll: PollSection,
    /// The bundle download.
    #[serde(default)]
    pub download: DownloadSection,
    /// The trial run of a newly installed bundle.
    #[serde(default)]
    pub trial: TrialSection,
    /// Canary: a new version runs in shadow beside the model in service and is promoted only
    /// on its evidence; absent means a new version goes straight to its trial.
    #[serde(default)]
    pub canary: Option<crate::canary::CanaryPolicy>,
    /// The retained status topic and update announcements; absent means no MQTT.
    #[serde(default)]
    pub mqtt: Option<MqttSection>,
    /// The Prometheus metrics endpoint of `model-updater run`; absent means no listener.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
}

/// `[repository]`: the central server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySection {
    /// Base URL of the TUF metadata (`…/metadata/`). Absent on an air-gapped box that only
    /// installs from a folder (`model-updater install-from`); then `targets_url` is absent too.
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// Base URL of the targets (`…/targets/`).
    #[serde(default)]
    pub targets_url: Option<String>,
    /// The root metadata shipped with the package; used only until the box has trusted a
    /// newer root (the root history in the state folder then takes over).
    pub trusted_root: PathBuf,
}

/// `[box]`: what this box runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxSection {
    /// Model name (the bundle manifest's `name`) this box runs.
    pub model: String,
    /// Production line of this box; targets restricted to other lines are ignored.
    #[serde(default)]
    pub line: Option<String>,
    /// Stations served by this box; a target restricted to stations must name one of them.
    #[serde(default)]
    pub stations: Vec<String>,
}

/// `[paths]`: local folders.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// The updater's own state: root history, anti-rollback record, downloads, status.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The model store the agent serves from.
    #[serde(default = "default_model_store")]
    pub model_store: PathBuf,
}

/// `[poll]`: when to check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSection {
    /// Seconds between two checks.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Up to this many seconds are added at random to each interval, so boxes spread out.
    #[serde(default = "default_jitter_s")]
    pub jitter_s: u64,
}

/// `[download]`: the resumable downloader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSection {
    /// Bandwidth cap in bytes per second; 0 means none.
    #[serde(default)]
    pub max_bytes_per_second: u64,
    /// Attempts per check before giving up until the next check.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry delay in milliseconds; doubled per attempt, with full jitter.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Largest retry delay in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// An attempt with no byte for this many seconds is abandoned (and resumed).
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: u64,
    /// Bytes kept free on the store's file system beyond what the download needs.
    #[serde(default = "default_free_space_margin")]
    pub free_space_margin_bytes: u64,
}

/// `[trial]`: how a new bundle proves itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSection {
    /// The agent's model health report (its `agent.model_health_file`).
    #[serde(default = "default_health_file")]
    pub health_file: PathBuf,
    /// Seconds the agent has to report the new bundle serving before it is reverted.
    #[serde(default = "default_trial_timeout_s")]
    pub timeout_s: u64,
    /// Load attempts (agent starts that died while loading the bundle) before it is reverted.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

/// `[mqtt]`: retained status and announcements.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address.
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; unique on the broker.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// User name, if the broker requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, if the broker requires one.
    #[serde(default)]
    pub password: Option<String>,
    /// Topic prefix shared with the agent; status goes to `<prefix>/updater`.
    pub topic_prefix: String,
    /// Topic whose messages trigger a check at once; `<prefix>/updater/announce` when absent.
    #[serde(default)]
    pub announce_topic: Option<String>,
    /// Keep-alive in seconds (5 or more).
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// TLS to the broker (`[mqtt.tls]`), as the agent's: without it the link is plain TCP.
    #[serde(default)]
    pub tls: Option<defect_shared::mqtt_tls::TlsSection>,
}

/// `[metrics]`: `GET /metrics` and `/healthz` while `model-updater run` runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address and port to listen on, such as `127.0.0.1:9102`.
    pub listen: String,
}

impl MqttSection {
    /// The retained status topic.
    pub fn status_topic(&self) -> String {
        format!("{}/updater", self.topic_prefix)
    }

    /// The announcement topic.
    pub fn announce_topic(&self) -> String {
        self.announce_topic
            .clone()
            .unwrap_or_else(|| format!("{}/updater/announce", self.topic_prefix))
    }

    /// `<prefix>/updater/approve`: ops approve the canary candidate (its SHA-256 or
    /// `model_version` as the payload); restrict it with broker ACLs.
    pub fn approve_topic(&self) -> String {
        format!("{}/updater/approve", self.topic_prefix)
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/model-updater")
}
fn default_model_store() -> PathBuf {
    PathBuf::from("/var/lib/defect-agent/models")
}
const fn default_interval_s() -> u64 {
    900
}
const fn default_jitter_s() -> u64 {
    120
}
const fn default_attempts() -> u32 {
    8
}
const fn default_backoff_initial_ms() -> u64 {
    1000
}
const fn default_backoff_max_ms() -> u64 {
    60_000
}
const fn default_stall_timeout_s() -> u64 {
    30
}
const fn default_free_space_margin() -> u64 {
    64 * 1024 * 1024
}
fn default_health_file() -> PathBuf {
    PathBuf::from("/var/lib/defect-agent/model-health.json")
}
const fn default_trial_timeout_s() -> u64 {
    300
}
const fn default_max_attempts() -> u32 {
    3
}
fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
const fn default_mqtt_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "model-updater".into()
}
const fn default_keep_alive_s() -> u64 {
    30
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            state_dir: default_state_dir(),
            model_store: default_model_store(),
        }
    }
}

impl Default for PollSection {
    fn default() -> Self {
        PollSection {
            interval_s: default_interval_s(),
            jitter_s: default_jitter_s(),
        }
    }
}

impl Default for DownloadSection {
    fn default() -> Self {
        DownloadSection {
            max_bytes_per_second: 0,
            attempts: default_attempts(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            stall_timeout_s: default_stall_timeout_s(),
            free_space_margin_bytes: default_free_space_margin(),
        }
    }
}

impl Default for TrialSection {
    fn default() -> Self {
        TrialSection {
            health_file: default_health_file(),
            timeout_s: default_trial_timeout_s(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl DownloadSection {
    /// The downloader policy these settings describe.
    pub fn policy(&self) -> crate::download::Policy {
        crate::download::Policy {
            max_bytes_per_second: (self.max_bytes_per_second > 0)
                .then_some(self.max_bytes_per_second),
            attempts: self.attempts,
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            stall_timeout: Duration::from_secs(self.stall_timeout_s),
            ..crate::download::Policy::default()
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} does not parse")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with the key and line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The values are inconsistent; every problem is listed, one per line.
    #[error("config {path} has {} problem(s):\n{problems}", problems.len())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Problems,
    },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new(""))
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config
            .problems()
            .into_result(config)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
    }

    /// The problems of the files and folders this configuration names, as the user running the
    /// check sees them (run it as the service user), and, given the agent's configuration, the
    /// paths the two must share: the agent's `model_health_file` is the trial's `health_file`
    /// and its `model_store` is this box's store.
    pub fn path_problems(&self, agent_config: Option<&Path>) -> Problems {
        use defect_shared::path_check::{self, Access};
        let mut p = Problems::new();
        path_check::readable_file(
            &mut p,
            "repository.trusted_root",
            &self.repository.trusted_root,
        );
        path_check::folder_or_creatable(
            &mut p,
            "paths.state_dir",
            &self.paths.state_dir,
            Access::ReadWrite,
        );
        path_check::folder_or_creatable(
            &mut p,
            "paths.model_store",
            &self.paths.model_store,
            Access::ReadWrite,
        );
        if let Some(folder) = self
            .trial
            .health_file
            .parent()
            .filter(|f| !f.as_os_str().is_empty())
        {
            path_check::folder(&mut p, "trial.health_file", folder, Access::Read);
        }
        if let Some(tls) = self.mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
            for (key, file) in tls.files() {
                path_check::readable_file(&mut p, key, file);
            }
        }
        if let Some(agent_config) = agent_config {
            self.agent_agreement(agent_config, &mut p);
        }
        p
    }

    /// Whether the agent's configuration at `path` names the same health report and model
    /// store as this one.
    fn agent_agreement(&self, path: &Path, p: &mut Problems) {
        let agent = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.to_string()))
        {
            Ok(agent) => agent,
            Err(error) => {
                p.add("--agent-config", format!("{}: {error}", path.display()));
                return;
            }
        };
        let agent_path = |key: &str| {
            agent
                .get("agent")
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        };
        match agent_path("model_health_file") {
            Some(report) if report == self.trial.health_file => {}
            Some(report) => p.add(
                "trial.health_file",
                format!(
                    "{} is not the agent's agent.model_health_file {} (in {}): trials would wait for a report that never comes",
                    self.trial.health_file.display(),
                    report.display(),
                    path.display()
                ),
            ),
            None => p.add(
                "trial.health_file",
                format!(
                    "the agent's configuration {} sets no agent.model_health_file: set it to {}, or every trial times out",
                    path.display(),
                    self.trial.health_file.display()
                ),
            ),
        }
        match agent_path("model_store") {
            Some(store) if store == self.paths.model_store => {}
            Some(store) => p.add(
                "paths.model_store",
                format!(
                    "{} is not the agent's agent.model_store {} (in {})",
                    self.paths.model_store.display(),
                    store.display(),
                    path.display()
                ),
            ),
            None => p.add(
                "paths.model_store",
                format!(
                    "the agent's configuration {} sets no agent.model_store: the agent serves its built-in model and never what this updater installs",
                    path.display()
                ),
            ),
        }
    }

    /// Every problem of the values, each naming its key.
    pub fn problems(&self) -> Problems {
        let mut problems = Problems::new();
        let mut add = |key: &str, message: &str| problems.add(key, message);
        match (&self.repository.metadata_url, &self.repository.targets_url) {
            (Some(_), None) => add(
                "repository.targets_url",
                "missing: metadata_url and targets_url go together (leave both out on a box that only installs from a folder)",
            ),
            (None, Some(_)) => add(
                "repository.metadata_url",
                "missing: metadata_url and targets_url go together (leave both out on a box that only installs from a folder)",
            ),
            _ => {}
        }
        for (key, value) in [
            ("repository.metadata_url", &self.repository.metadata_url),
            ("repository.targets_url", &self.repository.targets_url),
        ] {
            let Some(value) = value else {
                continue;
            };
            match url::Url::parse(value) {
                Ok(url) if ["http", "https", "file"].contains(&url.scheme()) => {}
                Ok(url) => add(
                    key,
                    &format!("scheme {:?} is not http, https or file", url.scheme()),
                ),
                Err(e) => add(key, &format!("{value:?} is not a URL: {e}")),
            }
        }
        if self.target.model.is_empty() {
            add("box.model", "must name the model this box runs");
        }
        if self.poll.interval_s == 0 {
            add("poll.interval_s", "must be at least 1");
        }
        if self.download.attempts == 0 {
            add("download.attempts", "must be at least 1");
        }
        if self.download.backoff_initial_ms > self.download.backoff_max_ms {
            add(
                "download.backoff_initial_ms",
                "must not exceed download.backoff_max_ms",
            );
        }
        if self.download.stall_timeout_s == 0 {
            add("download.stall_timeout_s", "must be at least 1");
        }
        if self.trial.timeout_s == 0 {
            add("trial.timeout_s", "must be at least 1");
        }
        if self.trial.max_attempts == 0 {
            add("trial.max_attempts", "must be at least 1");
        }
        if let Some(mqtt) = &self.mqtt {
            if mqtt.keep_alive_s < 5 {
                add("mqtt.keep_alive_s", "must be at least 5");
            }
            if mqtt.topic_prefix.is_empty() || mqtt.topic_prefix.contains(['#', '+']) {
                add(
                    "mqtt.topic_prefix",
                    "must be a non-empty topic without wildcards",
                );
            }
            if mqtt.client_id.is_empty() {
                add("mqtt.client_id", "must not be empty");
            }
            if let Some((key, problem)) = mqtt.tls.as_ref().and_then(|tls| tls.problem()) {
                add(key, problem);
            }
        }
        if let Some(metrics) = &self.metrics
            && metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            add(
                "metrics.listen",
                &format!(
                    "{:?} is not an address:port such as 127.0.0.1:9102",
                    metrics.listen
                ),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [repository]
        metadata_url = "https://updates.example.com/defect/metadata/"
        targets_url = "https://updates.example.com/defect/targets/"
        trusted_root = "/usr/share/model-updater/root.json"
        [box]
        model = "surface-classifier"
    "#;

    #[test]
    fn a_minimal_file_gets_safe_defaults() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.poll.interval_s, 900);
        assert_eq!(config.trial.max_attempts, 3);
        assert!(config.mqtt.is_none());
        assert!(config.metrics.is_none());
    }

    #[test]
    fn every_problem_is_reported_by_key() {
        let text = MINIMAL.replace("https://updates", "ftp://updates")
            + "[poll]\ninterval_s = 0\n[trial]\nmax_attempts = 0\n[metrics]\nlisten = \"9102\"\n";
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(&text) else {
            panic!("must be invalid");
        };
        assert_eq!(
            problems.keys(),
            [
                "repository.metadata_url",
                "repository.targets_url",
                "poll.interval_s",
                "trial.max_attempts",
                "metrics.listen"
            ]
        );
    }
}
