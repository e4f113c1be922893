//! The daemon's configuration file: what it holds, its defaults and its validation.
//!
//! This module owns the TOML schema of `defect-agent run --config FILE` and
//! `defect-agent check-config --config FILE`. Every field has a default that is safe on a real
//! line, and [`Config::load`] reports every problem at once, each naming its key, before
//! anything starts. It does not own what the settings do: each component reads its section.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use defect_shared::config_report::Problems;
use serde::{Deserialize, Serialize};

pub use crate::mqtt::settings::{MqttSection, PayloadFormat, Protocol, TlsSection};
pub use crate::result_log::ResultsSection;
pub use crate::sources::hot_folder::{AfterDecision, HotFolderSection};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pipeline, model and local state settings.
    #[serde(default)]
    pub agent: AgentSection,
    /// The MQTT broker the decisions go to.
    #[serde(default)]
    pub mqtt: MqttSection,
    /// The local result log and the `results` traceability topic.
    #[serde(default)]
    pub results: ResultsSection,
    /// The HTTP frame upload endpoint; absent means no HTTP listener.
    #[serde(default)]
    pub http: Option<HttpSection>,
    /// The Prometheus metrics endpoint; absent means no metrics listener.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// Line monitoring alarms.
    #[serde(default)]
    pub monitor: MonitorSection,
    /// Data drift against the bundle's baseline.
    #[serde(default)]
    pub drift: DriftSection,
    /// Data capture for retraining; off unless `enabled`.
    #[serde(default)]
    pub capture: CaptureSection,
    /// The inspection stations this box serves, one camera each.
    #[serde(default, rename = "station")]
    pub stations: Vec<StationSection>,
}

/// Pipeline, model and local state settings (`[agent]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Inference worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Frames that may wait in memory for a worker, at most: a memory bound (each holds its
    /// encoded image). A frame arriving at a full queue gets "no decision" at once. Whether a
    /// frame may wait is otherwise decided by its deadline: it is refused at once only when
    /// the frames ahead of it, at the measured service time, leave it no chance.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Time from a frame's arrival to its decision; past it, "no decision" is published.
    #[serde(default = "default_decision_deadline_ms")]
    pub decision_deadline_ms: u64,
    /// Folder for local state (the result log); must be writable.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Model store whose `current` bundle is served; absent means the shipped bundle.
    #[serde(default)]
    pub model_store: Option<PathBuf>,
    /// How often the model store's `current` pointer is checked for a new bundle.
    #[serde(default = "default_model_poll_ms")]
    pub model_poll_ms: u64,
    /// File the agent writes its verdict on the store's `current` bundle to (loading, serving
    /// or refused), for the model updater; absent means no report. Needs `model_store`.
    #[serde(default)]
    pub model_health_file: Option<PathBuf>,
    /// Decode large JPEGs at a reduced DCT scale when the model needs far fewer pixels (never
    /// for `area` models, whose input is the exact block mean of the full-size frame). A model
    /// whose manifest says `jpeg_decode = "scaled"` is always fed DCT-scaled decodes.
    #[serde(default = "default_true")]
    pub dct_scaling: bool,
    /// Largest accepted frame file or upload, in bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u64,
}

/// The HTTP frame upload endpoint (`[http]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address and port to listen on, such as `127.0.0.1:8080`.
    pub listen: String,
}

/// The Prometheus metrics endpoint (`[metrics]`): `GET /metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address and port to listen on, such as `127.0.0.1:9101`.
    pub listen: String,
}

/// Where a station's line running state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineState {
    /// The PLC publishes it on `<prefix>/<station>/line` (`running`/`stopped`, `1`/`0`);
    /// until it does, the camera alarm waits.
    Mqtt,
    /// Every line always runs: the camera alarm judges at all times.
    Always,
}

/// Line monitoring alarms (`[monitor]`), raised retained on `<prefix>/<station>/alarms/<alarm>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Live outcomes per station the rates are taken over.
    #[serde(default = "default_monitor_window")]
    pub window_frames: usize,
    /// Largest share of "no decision" results before `no_decision_rate` is raised.
    #[serde(default = "default_no_decision_max")]
    pub no_decision_max: f64,
    /// Largest share of missing or unreadable frames before `invalid_input_rate` is raised.
    #[serde(default = "default_invalid_input_max")]
    pub invalid_input_max: f64,
    /// Expected reject rate of decided frames, `[low, high]`; outside it `reject_rate` is
    /// raised. Absent: no reject-rate alarm.
    #[serde(default)]
    pub reject_rate_band: Option<[f64; 2]>,
    /// Seconds without a frame while the line runs before `camera_quiet` is raised; 0 is off.
    #[serde(default = "default_camera_quiet_s")]
    pub camera_quiet_s: u64,
    /// Where the line's running state comes from: `mqtt` or `always`.
    #[serde(default = "default_line_state")]
    pub line_state: LineState,
}

/// Data drift against the bundle's baseline (`[drift]`): PSI over a sliding window, published
/// retained on `<prefix>/<station>/drift` and raised as the `drift` alarm.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSection {
    /// Drift monitoring on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Frames per station in the sliding window.
    #[serde(default = "default_drift_window")]
    pub window_frames: usize,
    /// Frames between two evaluations of a full window.
    #[serde(default = "default_drift_every")]
    pub every_frames: usize,
    /// PSI of any feature at or above which drift is raised.
    #[serde(default = "default_psi_alarm")]
    pub psi_alarm: f64,
    /// PSI every feature must be below for drift to clear.
    #[serde(default = "default_psi_clear")]
    pub psi_clear: f64,
    /// Features compared: `brightness`, `contrast` (the default), `defect_score`,
    /// `reject_rate`. The last two assume the line's class mix is the baseline's.
    #[serde(default = "default_drift_features")]
    pub features: Vec<String>,
}

/// Data capture for retraining (`[capture]`): decided frames sampled into a bounded local
/// store, uploaded to a central server when one is configured and allowed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// Capture on.
    #[serde(default)]
    pub enabled: bool,
    /// The store's folder; absent means `<agent.state_dir>/capture`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most image bytes kept.
    #[serde(default = "default_capture_max_bytes")]
    pub max_bytes: u64,
    /// Keep a frame whose defect score is within this of its class's reject threshold.
    #[serde(default = "default_uncertain_margin")]
    pub uncertain_margin: f32,
    /// Share of frames kept while the station's drift alarm is raised.
    #[serde(default = "default_drift_fraction")]
    pub drift_fraction: f64,
    /// Share of the other frames kept at random.
    #[serde(default = "default_random_fraction")]
    pub random_fraction: f64,
    /// Keep every reject.
    #[serde(default)]
    pub every_reject: bool,
    /// Privacy switch: no frame ever leaves the device, whatever `[capture.upload]` says.
    #[serde(default)]
    pub keep_on_device: bool,
    /// The central server frames are uploaded to; absent keeps them on the device.
    #[serde(default)]
    pub upload: Option<UploadSection>,
}

/// Upload of captured frames (`[capture.upload]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSection {
    /// Base URL of the capture receiver, such as `https://central.example/v1/capture`.
    pub url: String,
    /// Seconds between upload rounds.
    #[serde(default = "default_upload_interval_s")]
    pub interval_s: f64,
    /// Most bytes per second sent.
    #[serde(default = "default_upload_rate")]
    pub max_bytes_per_second: u64,
}

/// One inspection station (`[[station]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Station id, one topic level: lowercase letters, digits, `-` and `_`.
    pub id: String,
    /// The hot folder the station's camera writes into; absent means HTTP only.
    #[serde(default)]
    pub hot_folder: Option<HotFolderSection>,
}

const fn default_queue_capacity() -> usize {
    64
}
const fn default_decision_deadline_ms() -> u64 {
    500
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/defect-agent")
}
const fn default_model_poll_ms() -> u64 {
    1000
}
const fn default_true() -> bool {
    true
}
const fn default_max_frame_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_capture_max_bytes() -> u64 {
    1024 * 1024 * 1024
}
const fn default_uncertain_margin() -> f32 {
    0.1
}
const fn default_drift_fraction() -> f64 {
    0.1
}
const fn default_random_fraction() -> f64 {
    0.001
}
const fn default_upload_interval_s() -> f64 {
    60.0
}
const fn default_upload_rate() -> u64 {
    1_000_000
}
const fn default_monitor_window() -> usize {
    200
}
const fn default_no_decision_max() -> f64 {
    0.05
}
const fn default_invalid_input_max() -> f64 {
    0.02
}
const fn default_camera_quiet_s() -> u64 {
    10
}
const fn default_line_state() -> LineState {
    LineState::Mqtt
}
const fn default_drift_window() -> usize {
    200
}
const fn default_drift_every() -> usize {
    10
}
const fn default_psi_alarm() -> f64 {
    0.25
}
const fn default_psi_clear() -> f64 {
    0.1
}
fn default_drift_features() -> Vec<String> {
    crate::monitor::drift::DriftSettings::default()
        .features
        .iter()
        .map(|f| f.name().to_owned())
        .collect()
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            workers: 0,
            queue_capacity: default_queue_capacity(),
            decision_deadline_ms: default_decision_deadline_ms(),
            state_dir: default_state_dir(),
            model_store: None,
            model_poll_ms: default_model_poll_ms(),
            model_health_file: None,
            dct_scaling: true,
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            enabled: false,
            dir: None,
            max_bytes: default_capture_max_bytes(),
            uncertain_margin: default_uncertain_margin(),
            drift_fraction: default_drift_fraction(),
            random_fraction: default_random_fraction(),
            every_reject: false,
            keep_on_device: false,
            upload: None,
        }
    }
}

impl Config {
    /// The capture settings, `None` when capture is off.
    pub fn capture_settings(&self) -> Option<crate::capture::CaptureSettings> {
        let c = &self.capture;
        if !c.enabled {
            return None;
        }
        Some(crate::capture::CaptureSettings {
            dir: self.capture_dir(),
            max_bytes: c.max_bytes,
            rules: crate::capture::sampler::SamplingRules {
                uncertain_margin: c.uncertain_margin,
                drift_fraction: c.drift_fraction,
                random_fraction: c.random_fraction,
                every_reject: c.every_reject,
            },
            upload: c.upload.as_ref().filter(|_| !c.keep_on_device).map(|u| {
                crate::capture::upload::UploadSettings {
                    url: u.url.clone(),
                    interval: std::time::Duration::from_secs_f64(u.interval_s),
                    max_bytes_per_second: u.max_bytes_per_second,
                }
            }),
        })
    }

    /// The capture store's folder.
    pub fn capture_dir(&self) -> PathBuf {
        self.capture
            .dir
            .clone()
            .unwrap_or_else(|| self.agent.state_dir.join("capture"))
    }
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            window_frames: default_monitor_window(),
            no_decision_max: default_no_decision_max(),
            invalid_input_max: default_invalid_input_max(),
            reject_rate_band: None,
            camera_quiet_s: default_camera_quiet_s(),
            line_state: default_line_state(),
        }
    }
}

impl Default for DriftSection {
    fn default() -> Self {
        DriftSection {
            enabled: true,
            window_frames: default_drift_window(),
            every_frames: default_drift_every(),
            psi_alarm: default_psi_alarm(),
            psi_clear: default_psi_clear(),
            features: default_drift_features(),
        }
    }
}

impl MonitorSection {
    /// The alarm limits this section sets.
    pub fn alarm_settings(&self) -> crate::monitor::alarms::AlarmSettings {
        crate::monitor::alarms::AlarmSettings {
            window: self.window_frames,
            no_decision_max: self.no_decision_max,
            invalid_input_max: self.invalid_input_max,
            reject_band: self.reject_rate_band.map(|[low, high]| (low, high)),
            camera_quiet: (self.camera_quiet_s > 0)
                .then(|| std::time::Duration::from_secs(self.camera_quiet_s)),
        }
    }
}

impl DriftSection {
    /// The detector settings, `None` when drift monitoring is off. Feature names are checked
    /// by the configuration; unknown ones are skipped here.
    pub fn drift_settings(&self) -> Option<crate::monitor::drift::DriftSettings> {
        use crate::monitor::drift::{DriftSettings, Feature};
        self.enabled.then(|| DriftSettings {
            window: self.window_frames,
            every: self.every_frames,
            psi_alarm: self.psi_alarm,
            psi_clear: self.psi_clear,
            features: self
                .features
                .iter()
                .filter_map(|f| Feature::from_name(f))
                .collect(),
            ..DriftSettings::default()
        })
    }
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} does not parse")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The file parses but has problems; all of them are listed.
    #[error("config {path} has {} problem(s):\n{problems}", problems.len())]
    Invalid {
        /// The config file.
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

    /// The problems of the files and folders this configuration names, as the user running
    /// the check sees them: hot folders that do not exist or cannot be written (decided files
    /// are removed from them), a state folder that cannot be created, unreadable TLS and
    /// password files, a model store that cannot be read. `check-config` reports them with the
    /// other problems; run it as the service user.
    pub fn path_problems(&self) -> Problems {
        use defect_shared::path_check::{self, Access};
        let mut p = Problems::new();
        for (index, station) in self.stations.iter().enumerate() {
            let Some(folder) = &station.hot_folder else {
                continue;
            };
            let key = format!("station[{index}].hot_folder.path");
            path_check::folder(&mut p, &key, &folder.path, Access::ReadWrite);
            if let (AfterDecision::Move, Some(to)) = (folder.after, &folder.move_to) {
                let key = format!("station[{index}].hot_folder.move_to");
                path_check::folder_or_creatable(&mut p, &key, to, Access::ReadWrite);
            }
        }
        path_check::folder_or_creatable(
            &mut p,
            "agent.state_dir",
            &self.agent.state_dir,
            Access::ReadWrite,
        );
        if let Some(store) = &self.agent.model_store {
            path_check::folder(&mut p, "agent.model_store", store, Access::Read);
        }
        if let Some(report) = &self.agent.model_health_file {
            path_check::writable_parent(&mut p, "agent.model_health_file", report);
        }
        if let Some(file) = &self.mqtt.password_file {
            path_check::readable_file(&mut p, "mqtt.password_file", file);
        }
        if let Some(tls) = &self.mqtt.tls {
            for (key, file) in tls.files() {
                path_check::readable_file(&mut p, key, file);
            }
        }
        p
    }

    /// Every problem of a parsed configuration; empty when it is usable.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        self.check_agent(&mut p);
        self.check_mqtt(&mut p);
        self.check_stations(&mut p);
        self.check_listeners(&mut p);
        self.check_monitor(&mut p);
        self.check_capture(&mut p);
        if self.results.max_entries == 0 {
            p.add("results.max_entries", "must be at least 1");
        }
        if self.results.max_age_h == 0 {
            p.add("results.max_age_h", "must be at least 1");
        }
        p
    }

    fn check_listeners(&self, p: &mut Problems) {
        let http = self
            .http
            .as_ref()
            .map(|h| ("http.listen", &h.listen, "8080"));
        let metrics = self
            .metrics
            .as_ref()
            .map(|m| ("metrics.listen", &m.listen, "9101"));
        let mut bound = Vec::new();
        for (key, listen, port) in [http, metrics].into_iter().flatten() {
            match listen.parse::<std::net::SocketAddr>() {
                Ok(address) => bound.push(address),
                Err(_) => p.add(
                    key,
                    format!("{listen:?} is not an address:port such as 127.0.0.1:{port}"),
                ),
            }
        }
        if let [http, metrics] = bound[..]
            && http == metrics
            && http.port() != 0
        {
            p.add("metrics.listen", format!("{metrics} is also http.listen"));
        }
    }

    fn check_capture(&self, p: &mut Problems) {
        let c = &self.capture;
        if c.max_bytes < 1024 * 1024 {
            p.add("capture.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if !(0.0..=1.0).contains(&c.uncertain_margin) {
            p.add(
                "capture.uncertain_margin",
                format!("{} is outside 0 to 1", c.uncertain_margin),
            );
        }
        for (key, value) in [
            ("capture.drift_fraction", c.drift_fraction),
            ("capture.random_fraction", c.random_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                p.add(key, format!("{value} is outside 0 to 1"));
            }
        }
        if let Some(dir) = &c.dir
            && dir.as_os_str().is_empty()
        {
            p.add("capture.dir", "must not be empty when given");
        }
        if let Some(upload) = &c.upload {
            if !(upload.url.starts_with("http://") || upload.url.starts_with("https://")) {
                p.add(
                    "capture.upload.url",
                    format!("{:?} is not an http:// or https:// URL", upload.url),
                );
            }
            if !(upload.interval_s.is_finite() && (0.05..=86_400.0).contains(&upload.interval_s)) {
                p.add(
                    "capture.upload.interval_s",
                    format!("{} is outside 0.05 to 86400", upload.interval_s),
                );
            }
            if upload.max_bytes_per_second < 1024 {
                p.add(
                    "capture.upload.max_bytes_per_second",
                    "must be at least 1024",
                );
            }
        }
    }

    fn check_monitor(&self, p: &mut Problems) {
        let m = &self.monitor;
        if !(10..=100_000).contains(&m.window_frames) {
            p.add(
                "monitor.window_frames",
                format!("{} is outside 10 to 100000", m.window_frames),
            );
        }
        for (key, value) in [
            ("monitor.no_decision_max", m.no_decision_max),
            ("monitor.invalid_input_max", m.invalid_input_max),
        ] {
            if !(0.0..=1.0).contains(&value) {
                p.add(key, format!("{value} is outside 0 to 1"));
            }
        }
        if let Some([low, high]) = m.reject_rate_band
            && !(0.0 <= low && low < high && high <= 1.0)
        {
            p.add(
                "monitor.reject_rate_band",
                format!("[{low}, {high}] must be [low, high] with 0 <= low < high <= 1"),
            );
        }
        let d = &self.drift;
        if !d.enabled {
            return;
        }
        if !(50..=100_000).contains(&d.window_frames) {
            p.add(
                "drift.window_frames",
                format!("{} is outside 50 to 100000", d.window_frames),
            );
        }
        if d.every_frames == 0 || d.every_frames > d.window_frames {
            p.add(
                "drift.every_frames",
                "must be at least 1 and at most drift.window_frames",
            );
        }
        if !(d.psi_clear > 0.0 && d.psi_clear <= d.psi_alarm && d.psi_alarm.is_finite()) {
            p.add(
                "drift.psi_clear",
                format!(
                    "{} must be above 0 and at most drift.psi_alarm ({})",
                    d.psi_clear, d.psi_alarm
                ),
            );
        }
        if d.features.is_empty() {
            p.add("drift.features", "must name at least one feature");
        }
        for name in &d.features {
            if crate::monitor::drift::Feature::from_name(name).is_none() {
                p.add(
                    "drift.features",
                    format!(
                        "{name:?} is not one of brightness, contrast, defect_score, reject_rate"
                    ),
                );
            }
        }
    }

    fn check_agent(&self, p: &mut Problems) {
        let a = &self.agent;
        if a.queue_capacity == 0 {
            p.add("agent.queue_capacity", "must be at least 1");
        }
        if !(10..=60_000).contains(&a.decision_deadline_ms) {
            p.add(
                "agent.decision_deadline_ms",
                format!("{} is outside 10 to 60000", a.decision_deadline_ms),
            );
        }
        if a.workers > 256 {
            p.add("agent.workers", format!("{} is more than 256", a.workers));
        }
        if a.model_poll_ms < 50 {
            p.add("agent.model_poll_ms", "must be at least 50");
        }
        if a.max_frame_bytes < 1024 {
            p.add("agent.max_frame_bytes", "must be at least 1024");
        }
        if a.state_dir.as_os_str().is_empty() {
            p.add("agent.state_dir", "must not be empty");
        }
        if let Some(store) = &a.model_store
            && store.as_os_str().is_empty()
        {
            p.add("agent.model_store", "must not be empty when given");
        }
        if let Some(report) = &a.model_health_file {
            if report.as_os_str().is_empty() {
                p.add("agent.model_health_file", "must not be empty when given");
            } else if a.model_store.is_none() {
                p.add(
                    "agent.model_health_file",
                    "needs agent.model_store (only store bundles are reported)",
                );
            }
        }
    }

    fn check_mqtt(&self, p: &mut Problems) {
        let m = &self.mqtt;
        if m.host.trim().is_empty() {
            p.add("mqtt.host", "must not be empty");
        }
        if m.port == 0 {
            p.add("mqtt.port", "must not be 0");
        }
        check_topic_prefix(&m.topic_prefix, p);
        if m.decision_expiry_s == 0 {
            p.add("mqtt.decision_expiry_s", "must be at least 1");
        }
        if !(5..=3600).contains(&m.keep_alive_s) {
            p.add(
                "mqtt.keep_alive_s",
                format!("{} is outside 5 to 3600", m.keep_alive_s),
            );
        }
        if m.heartbeat_ms < 100 {
            p.add("mqtt.heartbeat_ms", "must be at least 100");
        }
        if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
            p.add(
                "mqtt.reconnect_min_ms",
                "must be at least 1 and at most mqtt.reconnect_max_ms",
            );
        }
        if m.password_file.is_some() && m.username.is_none() {
            p.add("mqtt.password_file", "needs mqtt.username");
        }
        if let Some((key, problem)) = m.tls.as_ref().and_then(|tls| tls.problem()) {
            p.add(key, problem);
        }
        if m.client_id.len() > 64 {
            p.add("mqtt.client_id", "is longer than 64 characters");
        }
    }

    fn check_stations(&self, p: &mut Problems) {
        if self.stations.is_empty() {
            p.add("station", "at least one [[station]] is needed");
        }
        let mut seen = BTreeSet::new();
        let mut folders = BTreeSet::new();
        for (i, station) in self.stations.iter().enumerate() {
            let key = format!("station[{i}]");
            if !is_topic_level(&station.id) {
                p.add(
                    format!("{key}.id"),
                    format!(
                        "{:?} must be 1 to 64 lowercase letters, digits, '-' or '_'",
                        station.id
                    ),
                );
            } else if !seen.insert(station.id.clone()) {
                p.add(
                    format!("{key}.id"),
                    format!("{:?} is used by another station", station.id),
                );
            }
            let Some(folder) = &station.hot_folder else {
                continue;
            };
            if folder.path.as_os_str().is_empty() {
                p.add(format!("{key}.hot_folder.path"), "must not be empty");
            } else if !folders.insert(folder.path.clone()) {
                p.add(
                    format!("{key}.hot_folder.path"),
                    format!("{} is watched by another station", folder.path.display()),
                );
            }
            match regex::Regex::new(&folder.part_id_pattern) {
                Ok(re) if re.capture_names().flatten().any(|n| n == "part") => {}
                Ok(_) => p.add(
                    format!("{key}.hot_folder.part_id_pattern"),
                    "needs a named group (?P<part>...)",
                ),
                Err(e) => p.add(
                    format!("{key}.hot_folder.part_id_pattern"),
                    format!("is not a regular expression: {e}"),
                ),
            }
            match (folder.after, &folder.move_to) {
                (AfterDecision::Move, None) => p.add(
                    format!("{key}.hot_folder.move_to"),
                    "is needed with after = \"move\"",
                ),
                (AfterDecision::Move, Some(to)) if *to == folder.path => p.add(
                    format!("{key}.hot_folder.move_to"),
                    "must differ from the watched folder",
                ),
                _ => {}
            }
        }
    }

    /// Number of inference workers: the configured count, or one per core.
    pub fn worker_count(&self) -> usize {
        if self.agent.workers > 0 {
            self.agent.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

fn check_topic_prefix(prefix: &str, p: &mut Problems) {
    if prefix.is_empty() {
        p.add("mqtt.topic_prefix", "must not be empty");
        return;
    }
    if prefix.starts_with('/') || prefix.ends_with('/') {
        p.add("mqtt.topic_prefix", "must not start or end with '/'");
    }
    if prefix.contains(['#', '+']) || prefix.chars().any(|c| c.is_control()) {
        p.add(
            "mqtt.topic_prefix",
            "must not contain '#', '+' or control characters",
        );
    }
    if prefix.split('/').any(str::is_empty) {
        p.add("mqtt.topic_prefix", "must not have empty levels ('//')");
    }
}

/// Whether `s` is a valid station id: one lowercase topic level.
pub fn is_topic_level(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_safe_defaults() {
        let config = parse("[[station]]\nid = \"cam1\"\n").expect("valid");
        assert_eq!(config.agent.decision_deadline_ms, 500);
        assert_eq!(config.mqtt.protocol, Protocol::V5);
        assert_eq!(config.mqtt.payload, PayloadFormat::Json);
        assert!(config.http.is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[agent]
queue_capacity = 0
decision_deadline_ms = 5
[mqtt]
topic_prefix = "/acme/+/line"
port = 0
[http]
listen = "everywhere"
[metrics]
listen = "localhost"
[[station]]
id = "Cam 1"
[station.hot_folder]
path = "/srv/frames"
part_id_pattern = "(\\d+)"
after = "move"
"#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text) else {
            panic!("expected problems");
        };
        let keys = problems.keys();
        for key in [
            "agent.queue_capacity",
            "agent.decision_deadline_ms",
            "mqtt.topic_prefix",
            "mqtt.port",
            "http.listen",
            "metrics.listen",
            "station[0].id",
            "station[0].hot_folder.part_id_pattern",
            "station[0].hot_folder.move_to",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = parse("[agent]\nworkrs = 2\n[[station]]\nid = \"a\"\n").expect_err("typo");
        let text = defect_shared::error_chain::chain(&err);
        assert!(text.contains("workrs"), "{text}");
    }

    #[test]
    fn the_model_health_file_is_optional_and_checked_when_given() {
        let config = parse("[[station]]\nid = \"a\"\n").expect("valid");
        assert_eq!(config.agent.model_health_file, None);
        let config = parse(
            "[agent]\nmodel_store = \"/m\"\nmodel_health_file = \"/s/model-health.json\"\n[[station]]\nid = \"a\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.agent.model_health_file,
            Some(PathBuf::from("/s/model-health.json"))
        );
        for agent in [
            "model_store = \"/m\"\nmodel_health_file = \"\"",
            "model_health_file = \"/s/model-health.json\"",
        ] {
            let text = format!("[agent]\n{agent}\n[[station]]\nid = \"a\"\n");
            let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else {
                panic!("expected a problem with {agent:?}");
            };
            let keys = problems.keys();
            assert_eq!(keys, ["agent.model_health_file"], "{problems:?}");
        }
    }

    #[test]
    fn the_metrics_listener_is_optional_and_needs_an_address_of_its_own() {
        let config = parse("[[station]]\nid = \"a\"\n").expect("valid");
        assert!(config.metrics.is_none());
        let config = parse("[metrics]\nlisten = \"127.0.0.1:9101\"\n[[station]]\nid = \"a\"\n")
            .expect("valid");
        assert_eq!(
            config.metrics.map(|m| m.listen).as_deref(),
            Some("127.0.0.1:9101")
        );
        let text = "[http]\nlisten = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n[[station]]\nid = \"a\"\n";
        let Err(ConfigError::Invalid { problems, .. }) = parse(text) else {
            panic!("expected a problem");
        };
        let keys = problems.keys();
        assert_eq!(keys, ["metrics.listen"], "{problems:?}");
    }

    #[test]
    fn duplicate_stations_and_folders_are_refused() {
        let text = r#"
[[station]]
id = "a"
hot_folder = { path = "/x" }
[[station]]
id = "a"
hot_folder = { path = "/x" }
"#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text) else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
