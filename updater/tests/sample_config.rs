//! The sample configuration shipped in `deploy/` is valid as written.

use std::path::Path;

use model_updater::config::Config;

#[test]
fn the_sample_config_in_deploy_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/model-updater.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.target.model, "surface-classifier");
    assert_eq!(
        config.paths.model_store,
        Path::new("/var/lib/defect-agent/models")
    );
    assert!(config.mqtt.is_some());
    assert_eq!(
        config.metrics.map(|m| m.listen).as_deref(),
        Some("127.0.0.1:9102")
    );
}
