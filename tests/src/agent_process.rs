//! The real `defect-agent run` daemon as a child process of a test.
//!
//! This module owns the test's view of a running agent: a temporary folder with its config,
//! hot folders and state; starting it, killing it with SIGKILL or stopping it with SIGTERM,
//! and its log for failure messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Settings a test varies; the rest of the config is fixed.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Broker port.
    pub port: u16,
    /// `v5` or `v3.1.1`.
    pub protocol: &'static str,
    /// Topic prefix.
    pub prefix: String,
    /// Stations, each with a hot folder under the work folder.
    pub stations: Vec<String>,
    /// Decision deadline.
    pub deadline_ms: u64,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Worker threads.
    pub workers: usize,
    /// HTTP listen address, if any.
    pub http: Option<String>,
    /// Metrics listen address (`[metrics] listen`), if any.
    pub metrics: Option<String>,
    /// Model store folder, if any.
    pub model_store: Option<PathBuf>,
    /// Model health report file (`agent.model_health_file`), if any.
    pub model_health_file: Option<PathBuf>,
    /// Extra TOML appended to `[mqtt]`.
    pub mqtt_extra: String,
    /// Extra TOML appended to every `[station.hot_folder]`.
    pub hot_folder_extra: String,
    /// Extra top-level TOML (tables such as `[monitor]`), appended at the end.
    pub extra_toml: String,
    /// Extra environment variables of the process.
    pub env: Vec<(String, String)>,
    /// Run under a systemd-style watchdog of this many microseconds (`WATCHDOG_USEC`, with
    /// `WATCHDOG_PID` set to the agent's own pid, as systemd does).
    pub watchdog_usec: Option<u64>,
}

impl AgentSettings {
    /// Defaults for a test against the broker on `port`.
    pub fn new(port: u16) -> AgentSettings {
        AgentSettings {
            port,
            protocol: "v5",
            prefix: "acme/plant1/assembly/line3/vision".into(),
            stations: vec!["cam1".into()],
            deadline_ms: 3000,
            queue_capacity: 64,
            workers: 2,
            http: None,
            metrics: None,
            model_store: None,
            model_health_file: None,
            mqtt_extra: String::new(),
            hot_folder_extra: String::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            watchdog_usec: None,
        }
    }
}

/// A running (or stopped) agent.
pub struct AgentProcess {
    /// The work folder: config, hot folders, state, log.
    pub dir: tempfile::TempDir,
    /// The settings it was started with.
    pub settings: AgentSettings,
    child: Option<Child>,
}

impl AgentProcess {
    /// Writes the config and starts the agent.
    pub fn start(settings: AgentSettings) -> AgentProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = AgentProcess {
            dir,
            settings,
            child: None,
        };
        std::fs::write(agent.config_path(), agent.config_text()).expect("write config");
        for station in &agent.settings.stations {
            std::fs::create_dir_all(agent.hot_folder(station)).expect("hot folder");
        }
        agent.restart();
        agent
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// The hot folder of `station`.
    pub fn hot_folder(&self, station: &str) -> PathBuf {
        self.dir.path().join("hot").join(station)
    }

    /// The state folder (result log).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn config_text(&self) -> String {
        let s = &self.settings;
        let mut text = format!(
            "[agent]\nworkers = {}\nqueue_capacity = {}\ndecision_deadline_ms = {}\nstate_dir = {:?}\nmodel_poll_ms = 100\n",
            s.workers,
            s.queue_capacity,
            s.deadline_ms,
            self.state_dir()
        );
        if let Some(store) = &s.model_store {
            text.push_str(&format!("model_store = {store:?}\n"));
        }
        if let Some(report) = &s.model_health_file {
            text.push_str(&format!("model_health_file = {report:?}\n"));
        }
        text.push_str(&format!(
            "[mqtt]\nport = {}\nprotocol = {:?}\ntopic_prefix = {:?}\nkeep_alive_s = 5\nheartbeat_ms = 200\nreconnect_min_ms = 50\nreconnect_max_ms = 400\n{}\n",
            s.port, s.protocol, s.prefix, s.mqtt_extra
        ));
        if let Some(listen) = &s.http {
            text.push_str(&format!("[http]\nlisten = {listen:?}\n"));
        }
        if let Some(listen) = &s.metrics {
            text.push_str(&format!("[metrics]\nlisten = {listen:?}\n"));
        }
        for station in &s.stations {
            text.push_str(&format!(
                "[[station]]\nid = {station:?}\n[station.hot_folder]\npath = {:?}\npart_id_pattern = 'part-(?P<part>\\d+)'\n{}\n",
                self.hot_folder(station),
                s.hot_folder_extra
            ));
        }
        text.push_str(&s.extra_toml);
        text
    }

    /// Starts the agent again with the same config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let mut command = match self.settings.watchdog_usec {
            // `exec` keeps the shell's pid, so WATCHDOG_PID names the agent itself.
            Some(usec) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "export WATCHDOG_PID=$$ WATCHDOG_USEC={usec}; exec \"$0\" \"$@\""
                    ))
                    .arg(crate::binary("defect-agent"));
                c
            }
            None => Command::new(crate::binary("defect-agent")),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info,defect_agent=debug")
            .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start defect-agent");
        self.child = Some(child);
    }

    /// SIGKILL: no clean shutdown at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Process id of the running agent, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Forgets a process that ended by itself (it crashed), so that it can be restarted;
    /// returns its exit status.
    pub fn reap(&mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut child| child.wait().ok())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Drops a frame into the station's hot folder as a camera does: write under a temporary
    /// name, then rename into place.
    pub fn drop_frame(&self, station: &str, part: u64, bytes: &[u8]) -> PathBuf {
        let folder = self.hot_folder(station);
        let temporary = folder.join(format!(".part-{part}.jpg.tmp"));
        std::fs::write(&temporary, bytes).expect("write frame");
        let path = folder.join(format!("part-{part}.jpg"));
        std::fs::rename(&temporary, &path).expect("rename frame");
        path
    }

    /// Writes a file straight into the hot folder under its final name (close-after-write).
    pub fn write_file(&self, station: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.hot_folder(station).join(name);
        std::fs::write(&path, bytes).expect("write file");
        path
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads every sample frame and its label.
pub fn sample_bytes() -> Vec<(Vec<u8>, String)> {
    crate::sample_frames()
        .into_iter()
        .map(|(path, label)| (std::fs::read(&path).expect("sample frame"), label))
        .collect()
}

/// The class index of each label in the shipped model.
pub fn label_index(label: &str) -> u64 {
    const LABELS: [&str; 5] = ["good", "scratch", "dent", "crack", "stain"];
    LABELS
        .iter()
        .position(|l| *l == label)
        .map(|i| i as u64)
        .unwrap_or_else(|| panic!("unknown label {label}"))
}

/// Waits until `path` no longer exists (the agent removed a decided file).
pub fn wait_gone(path: &Path, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
