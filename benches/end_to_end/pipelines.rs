//! The pipelines under test: `defect-agent run` and the Python reference, each watching its own
//! hot folder and publishing to the benchmark's broker under its own station id.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Result;
use super::process::stop_child;

/// What the Python reference needs to know about the model, taken from the bundle's manifest.
pub struct ModelParams {
    /// The ONNX file taken out of the same bundle the agent serves.
    pub onnx: PathBuf,
    /// ONNX input name.
    pub input: String,
    /// Model input width and height.
    pub width: usize,
    /// Model input height.
    pub height: usize,
    /// Normalisation mean (gray).
    pub mean: f32,
    /// Normalisation standard deviation (gray).
    pub std: f32,
    /// Defect class index and its reject threshold.
    pub thresholds: Vec<(usize, f32)>,
}

/// One running pipeline with its hot folder; stopped when dropped.
pub struct Pipeline {
    /// Name in the report, also its station id and topic level.
    pub name: &'static str,
    /// The folder it watches.
    hot: PathBuf,
    /// Where frames are written before being renamed into `hot` (same file system).
    staging: PathBuf,
    /// Its stdout and stderr.
    log: PathBuf,
    /// The process.
    child: Child,
}

impl Pipeline {
    /// Starts `defect-agent run` on `bundle` with two workers, publishing JSON over MQTT 3.1.1.
    pub fn agent(
        binary: &Path,
        bundle: &Path,
        dir: &Path,
        port: u16,
        prefix: &str,
    ) -> Result<Pipeline> {
        let name = "agent";
        let (hot, staging, log) = folders(dir, name)?;
        let state = dir.join(format!("{name}-state"));
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let config = dir.join("defect-agent.toml");
        let text = format!(
            r#"[agent]
workers = 2
queue_capacity = 1024
decision_deadline_ms = 30000
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "v3.1.1"
client_id = "bench-agent"
topic_prefix = "{prefix}"
payload = "json"

[[station]]
id = "{name}"

[station.hot_folder]
path = "{hot}"
part_id_pattern = 'part-(?P<part>\d+)'
after = "delete"
"#,
            state = state.display(),
            hot = hot.display(),
        );
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--bundle")
            .arg(bundle)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&log)?)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        Ok(Pipeline {
            name,
            hot,
            staging,
            log,
            child,
        })
    }

    /// Starts the Python reference with two worker threads; `draft` makes Pillow decode JPEGs
    /// at a reduced DCT scale, as the agent does.
    pub fn python(
        python: &Path,
        script: &Path,
        model: &ModelParams,
        draft: bool,
        dir: &Path,
        port: u16,
        prefix: &str,
    ) -> Result<Pipeline> {
        let name = if draft { "python-draft" } else { "python" };
        let (hot, staging, log) = folders(dir, name)?;
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg("--folder")
            .arg(&hot)
            .arg("--model")
            .arg(&model.onnx)
            .args(["--input", &model.input])
            .args(["--width", &model.width.to_string()])
            .args(["--height", &model.height.to_string()])
            .args(["--mean", &model.mean.to_string()])
            .args(["--std", &model.std.to_string()])
            .args(["--port", &port.to_string()])
            .args(["--topic", &format!("{prefix}/{name}/decision")])
            .args(["--workers", "2"]);
        for (class, threshold) in &model.thresholds {
            command.args(["--threshold", &format!("{class}:{threshold}")]);
        }
        if draft {
            command.arg("--draft");
        }
        let child = command
            .stdin(Stdio::piped())
            .stdout(log_file(&log)?)
            .stderr(log_file(&log)?)
            .spawn()
            .map_err(|e| format!("start {}: {e}", python.display()))?;
        Ok(Pipeline {
            name,
            hot,
            staging,
            log,
            child,
        })
    }

    /// Writes a frame for `part` outside the hot folder, ready to be renamed in.
    pub fn stage(&self, part: u64, jpeg: &[u8]) -> Result<PathBuf> {
        let path = self.staging.join(format!("part-{part:08}.jpg"));
        std::fs::write(&path, jpeg).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Renames a staged frame into the hot folder, as a camera does.
    pub fn drop_in(&self, staged: &Path) -> Result<()> {
        let name = staged
            .file_name()
            .ok_or_else(|| format!("{} has no file name", staged.display()))?;
        std::fs::rename(staged, self.hot.join(name)).map_err(|e| {
            format!(
                "rename {} into {}: {e}",
                staged.display(),
                self.hot.display()
            )
        })
    }

    /// An error with the end of its log if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); end of its log:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.name);
    }
}

/// Creates the hot folder and the staging folder of pipeline `name`; returns them and its log.
fn folders(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let hot = dir.join(format!("{name}-hot"));
    let staging = dir.join(format!("{name}-staging"));
    for folder in [&hot, &staging] {
        std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    }
    Ok((hot, staging, dir.join(format!("{name}.log"))))
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}
