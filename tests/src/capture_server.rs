//! The real `defect-central capture-server` (the central receiver of captured frames) as a
//! child process of a test: started on a free loopback port, killed with SIGKILL, started
//! again on the same port and folder. It may also be started through the deprecated
//! `defect-agent capture-server`, which runs `defect-central` in its place.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::free_port;

/// A receiver process owned by a test.
pub struct CaptureServer {
    /// The loopback port it listens on.
    pub port: u16,
    /// The binary started with `capture-server` and its flags.
    binary: &'static str,
    dir: tempfile::TempDir,
    log: PathBuf,
    child: Option<Child>,
}

impl CaptureServer {
    /// Starts a receiver on a free port with an empty folder; returns once it accepts
    /// connections.
    pub fn start() -> CaptureServer {
        CaptureServer::start_with("defect-central")
    }

    /// Starts `<binary> capture-server` on a free port with an empty folder; returns once it
    /// accepts connections.
    pub fn start_with(binary: &'static str) -> CaptureServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let mut server = CaptureServer {
            port: free_port(),
            binary,
            dir,
            log,
            child: None,
        };
        server.restart();
        server
    }

    /// The base URL edge boxes upload to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/capture", self.port)
    }

    /// The folder objects are stored in (one folder per station).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("received")
    }

    /// The receiver's log so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the receiver again on the same port and folder.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "capture server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(crate::binary(self.binary))
            .args(["capture-server", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--dir")
            .arg(self.store())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start capture-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "capture-server did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The receiver's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the receiver with SIGKILL, as a crash or a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Files of a station's folder: `(name, bytes)`, partial uploads included.
    pub fn files(&self, station: &str) -> Vec<(String, Vec<u8>)> {
        list(&self.store().join(station))
    }
}

fn list(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    files.sort();
    files
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
