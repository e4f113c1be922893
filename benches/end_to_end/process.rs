//! Stopping the child processes the benchmark started, and nothing else.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Asks `child` to stop with SIGTERM, waits up to 10 s, then kills it.
pub fn stop_child(child: &mut Child, name: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{name} did not stop on SIGTERM within 10 s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}
