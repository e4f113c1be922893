//! `model-updater`'s config file, as `model-updater run` and `check-config` read it.

use std::path::Path;

use model_updater::config::Config;

/// Parses `data` as the updater's config and derives the settings the daemon derives from it.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, Path::new("model-updater.toml")) else {
        return;
    };
    let _ = config.problems();
    let _ = config.download.policy();
    if let Some(mqtt) = &config.mqtt {
        let _ = mqtt.status_topic();
        let _ = mqtt.announce_topic();
        let _ = mqtt.approve_topic();
    }
}
