//! Manifests: the TOML an author writes and the JSON inside a bundle.
//!
//! A manifest that parses and validates must survive its canonical JSON form unchanged: that
//! form is what the bundle stores and what the agent reads back.

use defect_models::Manifest;

/// Parses `data` as a TOML manifest and as a bundle's JSON manifest.
pub fn run(data: &[u8]) {
    if let Ok(manifest) = Manifest::from_json(data) {
        let _ = manifest.validate();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(text) else {
        return;
    };
    if manifest.validate().is_err() {
        return;
    }
    let json = manifest.to_canonical_json();
    match Manifest::from_json(&json) {
        Ok(again) => assert_eq!(again, manifest, "manifest changed through its JSON form"),
        Err(error) => panic!("a valid manifest's JSON form does not parse: {error}"),
    }
}
