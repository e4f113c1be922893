//! A real Mosquitto broker started by a test on a free loopback port.
//!
//! The broker runs as a child process with a configuration written to a temporary folder; it
//! can be stopped and started again on the same port (broker outage tests) and is killed when
//! dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Mosquitto process owned by a test.
pub struct Mosquitto {
    /// The loopback port it listens on.
    pub port: u16,
    config: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed (apt-get install -y mosquitto)")
}

impl Mosquitto {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::with_persistence(false)
    }

    /// Starts a broker that keeps sessions and retained messages across a clean restart
    /// (saved when it is stopped with SIGTERM).
    pub fn persistent() -> Mosquitto {
        Mosquitto::with_persistence(true)
    }

    /// Starts a broker with a configuration of the test's own (`{port}` in `config` stands for
    /// the broker's port, `{dir}` for a temporary folder the broker may use).
    pub fn with_config(config_text: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        // Keep the privileges of the test (mosquitto started as root otherwise switches to its
        // own user, which cannot read the test's private temporary folder).
        let text = format!("user root\n{config_text}")
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let mut broker = Mosquitto {
            port,
            config,
            _dir: dir,
            child: None,
        };
        broker.restart();
        broker
    }

    fn with_persistence(persistent: bool) -> Mosquitto {
        let persistence = if persistent {
            "persistence true\npersistence_location {dir}/\n"
        } else {
            "persistence false\n"
        };
        Mosquitto::with_config(&format!(
            "listener {{port}} 127.0.0.1\nallow_anonymous true\n{persistence}log_dest stderr\nlog_type error\nlog_type warning\n"
        ))
    }

    /// Starts the broker again on the same port (after [`Mosquitto::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the broker (its clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker with SIGTERM, letting it save its persistent state, and waits.
    pub fn stop_clean(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
