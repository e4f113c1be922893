//! `defect-agent`'s config file, as `defect-agent run` and `check-config` read it.

use std::path::Path;

use defect_agent::config::Config;

/// Parses `data` as the agent's config and derives every setting the daemon derives from it.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, Path::new("defect-agent.toml")) else {
        return;
    };
    let _ = config.problems();
    let _ = config.monitor.alarm_settings();
    let _ = config.drift.drift_settings();
    let _ = config.capture_settings();
    let _ = config.capture_dir();
    let _ = config.worker_count();
}
