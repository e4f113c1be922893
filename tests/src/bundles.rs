//! Model bundles made for tests from the shipped classifier.
//!
//! This module owns the variants the update tests publish: the shipped bundle with another
//! `model_version`, and one whose golden expectations the model does not meet, so that the
//! agent's validation gate refuses it while every structural check passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use defect_models::{Bundle, Manifest};

use crate::repo_root;

/// The latency budget of the variants, in place of the shipped 25 ms: the update tests run on
/// a shared machine, often beside other tests, where the gate's median can triple. They test
/// how versions travel, not the budget (the gate's own tests in `models/tests/gate.rs` do).
const TEST_LATENCY_BUDGET: &str = "latency_budget_ms = 500.0";

/// The shipped bundle rebuilt with `edit` applied to its manifest text, with the test latency
/// budget.
pub fn shipped_variant(edit: impl Fn(String) -> String) -> Vec<u8> {
    let dir = repo_root().join("models/shipped");
    let text = std::fs::read_to_string(dir.join("manifest.toml"))
        .expect("manifest")
        .replace("latency_budget_ms = 25.0", TEST_LATENCY_BUDGET);
    assert!(
        text.contains(TEST_LATENCY_BUDGET),
        "the shipped budget moved"
    );
    let manifest = Manifest::from_toml(&edit(text)).expect("edited manifest");
    let model = std::fs::read(dir.join("surface-classifier.onnx")).expect("onnx");
    let golden: BTreeMap<String, Vec<u8>> = manifest
        .validation
        .golden
        .iter()
        .map(|g| {
            (
                g.file.clone(),
                std::fs::read(dir.join(&g.file)).expect("golden"),
            )
        })
        .collect();
    Bundle::create(manifest, model, &golden)
        .expect("bundle")
        .bytes()
        .to_vec()
}

/// The shipped classifier as `model_version` `version`: passes the agent's gate.
pub fn with_model_version(version: u64) -> Vec<u8> {
    shipped_variant(|t| t.replace("model_version = 1", &format!("model_version = {version}")))
}

/// A bundle of `model_version` `version` whose golden expectations the model does not meet:
/// structurally valid, refused by the agent's validation gate.
pub fn failing_gate(version: u64) -> Vec<u8> {
    shipped_variant(|t| {
        t.replace("model_version = 1", &format!("model_version = {version}"))
            .replacen("expected = [", "expected = [0.5, 0.5, 0.0, 0.0, 0.0] #", 1)
    })
}

/// The shipped network as `model_version` `version`, but with only dents as defects: it passes
/// scratches, cracks and stains the shipped bundle rejects (the gate, which checks scores,
/// accepts it).
pub fn lets_defects_through(version: u64) -> Vec<u8> {
    shipped_variant(|text| {
        text.replace("model_version = 1", &format!("model_version = {version}"))
            .replace(
                "defects = [\"scratch\", \"dent\", \"crack\", \"stain\"]",
                "defects = [\"dent\"]",
            )
            .replace("scratch = 0.4\n", "")
            .replace("crack = 0.4\n", "")
            .replace("stain = 0.4\n", "")
    })
}

/// Writes bundle bytes to `<dir>/<name>` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}
