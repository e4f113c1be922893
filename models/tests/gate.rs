//! The validation gate on a small classifier built outside this project (the `onnx` Python
//! helper API): what it accepts, and the clear reasons it gives when it refuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use defect_models::gate::{self, GateError};
use defect_models::{Bundle, Manifest, ModelError, Verdict};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/foreign")
}

/// Builds the fixture's bundle after `edit` changes its manifest text.
fn bundle_with(edit: impl Fn(String) -> String) -> Bundle {
    let text = std::fs::read_to_string(fixture().join("manifest.toml")).expect("manifest");
    let manifest = Manifest::from_toml(&edit(text)).expect("edited manifest is valid");
    let model = std::fs::read(fixture().join("brightness-rule.onnx")).expect("onnx");
    let golden: BTreeMap<String, Vec<u8>> = manifest
        .validation
        .golden
        .iter()
        .map(|g| {
            (
                g.file.clone(),
                std::fs::read(fixture().join(&g.file)).expect("golden"),
            )
        })
        .collect();
    Bundle::create(manifest, model, &golden).expect("bundle")
}

#[test]
fn accepted_bundle_classifies_rgb_frames_with_logits_output() {
    let (model, report) = gate::validate(&bundle_with(|m| m)).expect("accepted");
    assert_eq!(report.golden.len(), 1);
    assert!(report.golden[0].max_abs_diff < 1e-4, "{report:?}");
    let mut classifier = model.classifier().expect("classifier");
    let red = std::fs::read(fixture().join("red.jpg")).expect("red.jpg");
    let result = classifier.classify_bytes(&red).expect("classify");
    assert_eq!(result.decision.verdict, Verdict::Reject);
    assert!(
        (result.scores.iter().sum::<f32>() - 1.0).abs() < 1e-5,
        "softmax applied"
    );
}

#[test]
fn golden_scores_out_of_tolerance_are_refused_naming_sample_and_label() {
    let bundle =
        bundle_with(|m| m.replace("expected = [0.016524, 0.983476]", "expected = [0.5, 0.1]"));
    let err = gate::validate(&bundle).expect_err("accepted wrong golden scores");
    assert!(matches!(err, GateError::GoldenMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("golden/red.png"), "{message}");
    assert!(
        message.contains("scores 0.9835 for \"red_defect\", expected 0.1000"),
        "{message}"
    );
}

#[test]
fn model_over_its_latency_budget_is_refused() {
    let bundle =
        bundle_with(|m| m.replace("latency_budget_ms = 5.0", "latency_budget_ms = 0.000001"));
    let err = gate::validate(&bundle).expect_err("accepted");
    assert!(matches!(err, GateError::OverBudget { .. }), "{err}");
    assert!(err.to_string().contains("over the latency budget"), "{err}");
}

#[test]
fn bundle_needing_a_newer_agent_is_refused() {
    let bundle = bundle_with(|m| {
        m.replace(
            "min_agent_version = \"0.1.0\"",
            "min_agent_version = \"99.0.0\"",
        )
    });
    let err = gate::validate(&bundle).expect_err("accepted");
    assert!(
        err.to_string()
            .contains("needs defect-agent 99.0.0 or newer"),
        "{err}"
    );
}

#[test]
fn unknown_tensor_names_are_refused_listing_the_real_ones() {
    let bundle = bundle_with(|m| m.replace("tensor = \"logits\"", "tensor = \"probs\""));
    let err = gate::validate(&bundle).expect_err("accepted");
    assert!(
        matches!(
            err,
            GateError::Load(ModelError::NoSuchTensor { kind: "output", .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"probs\" (it has logits)"),
        "{err}"
    );
}

#[test]
fn output_size_not_matching_labels_is_refused() {
    let bundle = bundle_with(|m| {
        m.replace(
            "labels = [\"ok\", \"red_defect\"]",
            "labels = [\"ok\", \"red_defect\", \"blue_defect\"]",
        )
        .replace(
            "defects = [\"red_defect\"]",
            "defects = [\"red_defect\", \"blue_defect\"]",
        )
        .replace("red_defect = 0.5", "red_defect = 0.5\nblue_defect = 0.5")
        .replace(
            "expected = [0.016524, 0.983476]",
            "expected = [0.016524, 0.983476, 0.0]",
        )
    });
    let err = gate::validate(&bundle).expect_err("accepted");
    assert!(err.to_string().contains("expected [1, 3]"), "{err}");
}
