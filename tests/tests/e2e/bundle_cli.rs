//! The `model-bundle` tool end to end: create, inspect, verify, and refusing bad bundles.

mod authoring;

use std::path::{Path, PathBuf};

use defect_e2e::{repo_root, run, shipped_bundle, stderr, stdout};
use prost::Message;
use tract_onnx::pb::ModelProto;

fn shipped_dir() -> PathBuf {
    repo_root().join("models/shipped")
}

fn create(manifest: &Path, onnx: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "create",
        "--manifest",
        manifest.to_str().expect("utf-8 path"),
        "--onnx",
        onnx.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    run("model-bundle", &args)
}

/// Copies the shipped manifest and golden samples into `dir`, applying `edit` to the manifest.
fn copy_shipped_sources(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let golden = dir.join("golden");
    std::fs::create_dir_all(&golden).expect("mkdir");
    for entry in std::fs::read_dir(shipped_dir().join("golden")).expect("golden dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), golden.join(entry.file_name())).expect("copy golden");
    }
    let manifest = std::fs::read_to_string(shipped_dir().join("manifest.toml")).expect("manifest");
    let path = dir.join("manifest.toml");
    std::fs::write(&path, edit(manifest)).expect("write manifest");
    path
}

#[test]
fn bundle_round_trip_create_inspect_verify_classify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rebuilt.dmb");
    let onnx = shipped_dir().join("surface-classifier.onnx");
    let created = create(&shipped_dir().join("manifest.toml"), &onnx, &out, &[]);
    assert!(
        created.status.success(),
        "create failed: {}",
        stderr(&created)
    );

    let rebuilt = std::fs::read(&out).expect("rebuilt bundle");
    let shipped = std::fs::read(shipped_bundle()).expect("shipped bundle");
    assert!(
        rebuilt == shipped,
        "the same inputs must give the committed bundle byte for byte"
    );

    let inspect = run("model-bundle", &["inspect", out.to_str().expect("path")]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = stdout(&inspect);
    assert!(text.contains("surface-classifier 1.0.0"), "{text}");
    assert!(text.contains("[1, 1, 256, 320]"), "{text}");

    let verify = run("model-bundle", &["verify", out.to_str().expect("path")]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    assert!(stdout(&verify).contains(": OK"), "{}", stdout(&verify));

    let (frame, label) = defect_e2e::sample_frames()
        .into_iter()
        .next()
        .expect("a sample");
    let classify = run(
        "defect-agent",
        &[
            "classify",
            "--json",
            "--bundle",
            out.to_str().expect("path"),
            frame.to_str().expect("path"),
        ],
    );
    assert!(classify.status.success(), "{}", stderr(&classify));
    let line: serde_json::Value = serde_json::from_str(stdout(&classify).trim()).expect("json");
    assert_eq!(line["class"], label.as_str());
}

#[test]
fn bundle_with_altered_weights_fails_the_golden_gate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(shipped_dir().join("surface-classifier.onnx")).expect("onnx");
    let mut model = ModelProto::decode(bytes.as_slice()).expect("decode onnx");
    let graph = model.graph.as_mut().expect("graph");
    // Flip the sign of the largest weight tensor: the model still loads but answers differently.
    let largest = graph
        .initializer
        .iter_mut()
        .max_by_key(|t| t.raw_data.len().max(t.float_data.len() * 4))
        .expect("initializers");
    if largest.raw_data.is_empty() {
        largest.float_data.iter_mut().for_each(|v| *v = -*v);
    } else {
        largest
            .raw_data
            .chunks_exact_mut(4)
            .for_each(|c| c[3] ^= 0x80);
    }
    let altered = dir.path().join("altered.onnx");
    std::fs::write(&altered, model.encode_to_vec()).expect("write onnx");
    let manifest = copy_shipped_sources(dir.path(), |m| m);
    let out = dir.path().join("altered.dmb");

    let refused = create(&manifest, &altered, &out, &[]);
    assert!(!refused.status.success(), "altered model accepted");
    let message = stderr(&refused);
    assert!(
        message.contains("golden sample(s) out of tolerance"),
        "{message}"
    );
    assert!(
        message.contains("golden/"),
        "message names the sample: {message}"
    );
    assert!(!out.exists(), "a refused bundle must not be written");

    let forced = create(&manifest, &altered, &out, &["--no-verify"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let verify = run("model-bundle", &["verify", out.to_str().expect("path")]);
    assert!(!verify.status.success());
    assert!(
        stderr(&verify).contains("out of tolerance"),
        "{}",
        stderr(&verify)
    );
    let classify = run(
        "defect-agent",
        &[
            "classify",
            "--bundle",
            out.to_str().expect("path"),
            "/dev/null",
        ],
    );
    assert_eq!(
        classify.status.code(),
        Some(2),
        "the agent refuses to serve it"
    );
}

#[test]
fn bundle_with_wrong_input_shape_or_channels_is_refused() {
    let onnx = shipped_dir().join("surface-classifier.onnx");

    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = copy_shipped_sources(dir.path(), |m| {
        m.replace("shape = [1, 1, 256, 320]", "shape = [1, 1, 224, 224]")
    });
    let out = create(&manifest, &onnx, &dir.path().join("x.dmb"), &[]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("declared as 1x1x256x320"), "{message}");
    assert!(message.contains("[1, 1, 224, 224]"), "{message}");

    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = copy_shipped_sources(dir.path(), |m| {
        m.replace("shape = [1, 1, 256, 320]", "shape = [1, 3, 256, 320]")
            .replace("color = \"gray\"", "color = \"rgb\"")
            .replace("mean = [", "mean = [0.5, 0.5, ")
            .replace("std = [", "std = [0.25, 0.25, ")
    });
    let out = create(&manifest, &onnx, &dir.path().join("x.dmb"), &[]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("declared as 1x1x256x320"), "{message}");

    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = copy_shipped_sources(dir.path(), |m| {
        m.replace("shape = [1, 1, 256, 320]", "shape = [1, 3, 256, 320]")
    });
    let out = create(&manifest, &onnx, &dir.path().join("x.dmb"), &[]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("input.shape: has 3 channel(s) but input.color Gray needs 1"),
        "{message}"
    );
}

#[test]
fn truncated_or_non_bundle_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::fs::read(shipped_bundle()).expect("shipped");
    let cases = [
        ("truncated.dmb", shipped[..shipped.len() / 2].to_vec()),
        ("empty.dmb", Vec::new()),
        (
            "photo.dmb",
            std::fs::read(&defect_e2e::sample_frames()[0].0).expect("sample"),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        for command in ["verify", "inspect"] {
            let out = run("model-bundle", &[command, path.to_str().expect("path")]);
            assert!(!out.status.success(), "{command} accepted {name}");
            let message = stderr(&out);
            assert!(message.contains(name), "names the file: {message}");
            assert!(message.contains("not a model bundle"), "{message}");
        }
    }
}

#[test]
fn classifier_exported_by_another_tool_is_bundled_and_runs() {
    let foreign = repo_root().join("models/testdata/foreign");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("foreign.dmb");
    let created = create(
        &foreign.join("manifest.toml"),
        &foreign.join("brightness-rule.onnx"),
        &out,
        &[],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let classify = run(
        "defect-agent",
        &[
            "classify",
            "--json",
            "--bundle",
            out.to_str().expect("path"),
            foreign.join("red.jpg").to_str().expect("path"),
            foreign.join("gray.jpg").to_str().expect("path"),
        ],
    );
    assert!(classify.status.success(), "{}", stderr(&classify));
    let lines: Vec<serde_json::Value> = stdout(&classify)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        (lines[0]["result"].as_str(), lines[0]["class"].as_str()),
        (Some("reject"), Some("red_defect"))
    );
    assert_eq!(
        (lines[1]["result"].as_str(), lines[1]["class"].as_str()),
        (Some("pass"), Some("ok"))
    );
}
