//! Bring your own model: `create` computing every number from images, `evaluate` with gates and
//! `--compare`, `card`, a third-party ONNX wrapped with a decided-only manifest, and the
//! training tensors bit-identical to what tract is fed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use defect_e2e::{python_tuf, repo_root, run, sample_frames, shipped_bundle, stderr, stdout};
use defect_models::{Bundle, DecodeOptions, Model};
use sha2::{Digest, Sha256};

/// The shipped model's decided fields only: no threshold, golden score, baseline or provenance.
const DECIDED_SHIPPED: &str = r#"
name = "surface-classifier"
version = "9.0.0"
model_version = 9

[input]
tensor = "frame"
shape = [1, 1, 256, 320]
layout = "nchw"
color = "gray"
dtype = "f32"

[preprocess]
resize = "area"
scale = 0.00392156862745098
mean = [0.38]
std = [0.2]

[output]
tensor = "scores"
kind = "probabilities"
labels = ["good", "scratch", "dent", "crack", "stain"]
defects = ["scratch", "dent", "crack", "stain"]
target_recall = 1.0

[validation]
latency_budget_ms = 200.0
"#;

fn shipped_onnx() -> PathBuf {
    repo_root().join("models/shipped/surface-classifier.onnx")
}

fn samples_csv() -> PathBuf {
    repo_root().join("models/samples/labels.csv")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The sample frames copied into one folder per label, as capture-export lays them out.
fn samples_as_folders(dir: &Path) -> PathBuf {
    let root = dir.join("frames");
    for (file, label) in sample_frames() {
        let folder = root.join(&label);
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::copy(&file, folder.join(file.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(root.join("captured.csv"), "not,an,image\n").expect("write csv");
    root
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn manifest_json(bundle: &Path) -> serde_json::Value {
    let out = run("model-bundle", &["inspect", "--json", path(bundle)]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("manifest json")
}

fn create(args: &[&str]) -> Output {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    run("model-bundle", &all)
}

#[test]
fn create_computes_every_number_from_a_decided_only_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = samples_as_folders(dir.path());
    let manifest = write(dir.path(), "manifest.toml", DECIDED_SHIPPED);
    let out = dir.path().join("computed.dmb");
    let created = create(&[
        "--manifest",
        path(&manifest),
        "--onnx",
        path(&shipped_onnx()),
        "--golden",
        path(&frames),
        "--golden-per-label",
        "1",
        "--validation",
        path(&samples_csv()),
        "--out",
        path(&out),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let text = stdout(&created);
    assert!(text.contains("(computed)"), "{text}");
    assert!(
        text.contains("operating point on 30 labelled validation frames"),
        "{text}"
    );
    assert!(text.contains("true \\ decided"), "{text}");

    let m = manifest_json(&out);
    for defect in ["scratch", "dent", "crack", "stain"] {
        let t = m["output"]["reject_threshold"][defect]
            .as_f64()
            .expect("threshold");
        assert!(t > 0.0 && t <= 1.0, "{defect} threshold {t}");
    }
    assert_eq!(
        m["validation"]["golden"].as_array().expect("golden").len(),
        5
    );
    assert_eq!(m["validation"]["tolerance"], 0.01);
    assert_eq!(m["baseline"]["frames"], 30);
    let counts: u64 = m["baseline"]["brightness"]["counts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_u64().expect("count"))
        .sum();
    assert_eq!(counts, 30);
    let onnx = std::fs::read(shipped_onnx()).expect("onnx");
    let sha: String = Sha256::digest(&onnx)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(m["provenance"]["onnx_sha256"], sha.as_str());
    assert_eq!(m["provenance"]["validation_data"]["frames"], 30);
    assert!(
        m["provenance"]["created_by"]
            .as_str()
            .expect("tool")
            .starts_with("model-bundle ")
    );
    assert_eq!(m["operating_point"]["defect_recall"], 1.0);
    assert_eq!(m["operating_point"]["frames"], 30);

    // The bundle passes its own gate here, and the golden scores were computed the gate's way.
    let verify = run("model-bundle", &["verify", path(&out)]);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // A hand-written threshold wins over the computed one; the rest are still computed.
    let pinned = write(
        dir.path(),
        "pinned.toml",
        &DECIDED_SHIPPED.replace(
            "[validation]",
            "[output.reject_threshold]\nscratch = 0.9\n\n[validation]",
        ),
    );
    let out2 = dir.path().join("pinned.dmb");
    let created = create(&[
        "--manifest",
        path(&pinned),
        "--onnx",
        path(&shipped_onnx()),
        "--validation",
        path(&frames),
        "--out",
        path(&out2),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("scratch >= 0.9 (as written)"),
        "{}",
        stdout(&created)
    );
    let m2 = manifest_json(&out2);
    assert_eq!(m2["output"]["reject_threshold"]["scratch"], 0.9);
    // Without --golden, golden samples come from the validation frames (two per label).
    assert_eq!(
        m2["validation"]["golden"].as_array().expect("golden").len(),
        10
    );
}

#[test]
fn create_names_the_missing_field_and_the_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write(
        dir.path(),
        "broken.toml",
        &DECIDED_SHIPPED.replace("latency_budget_ms = 200.0", "tolerance = 0.02"),
    );
    let out = dir.path().join("x.dmb");
    let refused = create(&[
        "--manifest",
        path(&manifest),
        "--onnx",
        path(&shipped_onnx()),
        "--validation",
        path(&samples_csv()),
        "--out",
        path(&out),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert_eq!(message.matches("broken.toml").count(), 1, "{message}");
    assert_eq!(message.matches("latency_budget_ms").count(), 1, "{message}");
    assert!(!out.exists());

    // No target recall and no threshold: the message says which key to set.
    let manifest = write(
        dir.path(),
        "untargeted.toml",
        &DECIDED_SHIPPED.replace("target_recall = 1.0", ""),
    );
    let refused = create(&[
        "--manifest",
        path(&manifest),
        "--onnx",
        path(&shipped_onnx()),
        "--validation",
        path(&samples_csv()),
        "--out",
        path(&out),
    ]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("output.reject_threshold.scratch"),
        "{message}"
    );
    assert!(message.contains("target_recall"), "{message}");

    // Frames in a folder the model has no label for are named, not silently dropped.
    let frames = samples_as_folders(dir.path());
    std::fs::create_dir_all(frames.join("unlabelled")).expect("mkdir");
    let (first, _) = sample_frames().into_iter().next().expect("sample");
    std::fs::copy(&first, frames.join("unlabelled/x.jpg")).expect("copy");
    let refused = create(&[
        "--manifest",
        path(&write(dir.path(), "m.toml", DECIDED_SHIPPED)),
        "--onnx",
        path(&shipped_onnx()),
        "--validation",
        path(&frames),
        "--out",
        path(&out),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("\"unlabelled\""),
        "{}",
        stderr(&refused)
    );
}

fn evaluate(args: &[&str]) -> Output {
    let mut all = vec!["evaluate"];
    all.extend_from_slice(args);
    run("model-bundle", &all)
}

#[test]
fn evaluate_reports_figures_and_enforces_gates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = samples_as_folders(dir.path());
    let shipped = shipped_bundle();
    let report = dir.path().join("evaluation.json");
    let passed = evaluate(&[
        path(&shipped),
        path(&frames),
        "--min-recall",
        "0.99",
        "--max-false-reject",
        "0.01",
        "--min-class-recall",
        "scratch=0.9",
        "--out",
        path(&report),
    ]);
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{}{}",
        stdout(&passed),
        stderr(&passed)
    );
    let text = stdout(&passed);
    assert!(
        text.contains("defect recall       100.00 % (0 escape(s))"),
        "{text}"
    );
    assert!(text.contains("gate min_recall"), "{text}");

    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(e["figures"]["frames"], 30);
    assert_eq!(e["figures"]["defect_frames"], 24);
    assert_eq!(e["figures"]["defect_recall"], 1.0);
    assert_eq!(e["figures"]["false_reject_rate"], 0.0);
    let confusion = e["figures"]["confusion"].as_array().expect("confusion");
    for (i, row) in confusion.iter().enumerate() {
        assert_eq!(row[i], 6, "row {i}: {row}");
    }
    assert!(
        e["latency"]["inference_median_ms"]
            .as_f64()
            .expect("median")
            > 0.0
    );
    assert!(
        e["latency"]["inference_p99_ms"].as_f64().expect("p99")
            >= e["latency"]["inference_median_ms"]
                .as_f64()
                .expect("median")
    );

    // The same frames as a file,label CSV give the same figures; an unmet gate exits 1.
    let failed = evaluate(&[
        path(&shipped),
        path(&samples_csv()),
        "--json",
        "--max-p99-ms",
        "0.000001",
    ]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let e2: serde_json::Value = serde_json::from_str(&stdout(&failed)).expect("json");
    assert_eq!(e2["figures"]["confusion"], e["figures"]["confusion"]);
    assert_eq!(e2["gates"][0]["gate"], "max_p99_ms");
    assert_eq!(e2["gates"][0]["met"], false);

    // The model card carries the evaluation.
    let card = run(
        "model-bundle",
        &["card", path(&shipped), "--evaluation", path(&report)],
    );
    assert!(card.status.success(), "{}", stderr(&card));
    let md = stdout(&card);
    for needle in [
        "# Model card: surface-classifier 1.0.0",
        "## What it detects",
        "## Held-out evaluation",
        "| **scratch** |",
        "## Provenance",
        "## Limits",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
}

#[test]
fn evaluate_compare_lists_every_flip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = samples_as_folders(dir.path());
    // A model that never rejects a scratch: the same network, the scratch threshold at 1.
    let lax = write(
        dir.path(),
        "lax.toml",
        &DECIDED_SHIPPED.replace(
            "target_recall = 1.0",
            "reject_threshold = { scratch = 1.0, dent = 0.4, crack = 0.4, stain = 0.4 }",
        ),
    );
    let lax_bundle = dir.path().join("lax.dmb");
    let created = create(&[
        "--manifest",
        path(&lax),
        "--onnx",
        path(&shipped_onnx()),
        "--validation",
        path(&frames),
        "--out",
        path(&lax_bundle),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));

    let compared = evaluate(&[
        path(&lax_bundle),
        path(&frames),
        "--compare",
        path(&shipped_bundle()),
        "--json",
        "--max-reject-to-pass",
        "0",
    ]);
    assert_eq!(compared.status.code(), Some(1), "{}", stderr(&compared));
    let e: serde_json::Value = serde_json::from_str(&stdout(&compared)).expect("json");
    let c = &e["comparison"];
    let flips = c["flips"].as_array().expect("flips");
    let escapes = e["figures"]["escapes"].as_u64().expect("escapes");
    assert!(escapes > 0, "the lax model passes no scratch");
    assert_eq!(c["reject_to_pass"].as_u64(), Some(escapes));
    assert_eq!(flips.len() as u64, escapes);
    for flip in flips {
        assert_eq!(flip["label"], "scratch");
        assert_eq!(flip["other"]["verdict"], "reject");
        assert_eq!(flip["bundle"]["verdict"], "pass");
        assert!(flip["file"].as_str().expect("file").starts_with("scratch/"));
    }
    assert_eq!(c["other_figures"]["defect_recall"], 1.0);
}

#[test]
fn a_third_party_onnx_is_wrapped_with_a_decided_only_manifest() {
    // An RGB classifier with logits output, built outside this project (onnx helper API):
    // three commands, no number typed by hand.
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = repo_root().join("models/testdata/foreign");
    let data = dir.path().join("data");
    for (label, file) in [("ok", "gray.jpg"), ("red_defect", "red.jpg")] {
        std::fs::create_dir_all(data.join(label)).expect("mkdir");
        std::fs::copy(foreign.join(file), data.join(label).join(file)).expect("copy");
    }
    let manifest = write(
        dir.path(),
        "manifest.toml",
        r#"
name = "red-parts"
version = "1"
model_version = 1

[input]
shape = [1, 3, 16, 16]
layout = "nchw"
color = "rgb"
dtype = "f32"

[preprocess]
resize = "bilinear"
scale = 0.00392156862745098
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
kind = "logits"
labels = ["ok", "red_defect"]
defects = ["red_defect"]
target_recall = 1.0

[validation]
latency_budget_ms = 5.0
"#,
    );
    let bundle = dir.path().join("red-parts.dmb");
    let created = create(&[
        "--manifest",
        path(&manifest),
        "--onnx",
        path(&foreign.join("brightness-rule.onnx")),
        "--golden",
        path(&data),
        "--validation",
        path(&data),
        "--out",
        path(&bundle),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let evaluated = evaluate(&[
        path(&bundle),
        path(&data),
        "--min-recall",
        "1",
        "--max-false-reject",
        "0",
    ]);
    assert_eq!(
        evaluated.status.code(),
        Some(0),
        "{}{}",
        stdout(&evaluated),
        stderr(&evaluated)
    );
    let classified = run(
        "defect-agent",
        &[
            "classify",
            "--json",
            "--bundle",
            path(&bundle),
            path(&foreign.join("red.jpg")),
        ],
    );
    assert!(classified.status.success(), "{}", stderr(&classified));
    let line: serde_json::Value = serde_json::from_str(stdout(&classified).trim()).expect("json");
    assert_eq!(line["class"], "red_defect");
}

/// SHA-256 of each frame's input tensor as the agent's worker prepares it for tract.
fn agent_tensor_digests(bundle: &Path, files: &[PathBuf]) -> Vec<String> {
    let bundle = Bundle::open(bundle).expect("bundle");
    let model = Model::load(&bundle).expect("model");
    let mut classifier = model.classifier().expect("classifier");
    // The worker's decode options with the agent's default dct_scaling = true.
    classifier.set_decode_options(DecodeOptions::default(), true);
    files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).expect("frame");
            let (tensor, _) = classifier.prepare_bytes(&bytes).expect("tensor");
            let mut hasher = Sha256::new();
            for v in tensor
                .to_plain_array_view::<f32>()
                .expect("f32 tensor")
                .iter()
            {
                hasher.update(v.to_le_bytes());
            }
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

#[test]
fn training_tensors_are_bit_identical_to_what_tract_is_fed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tensors");
    let written = run(
        "model-bundle",
        &[
            "tensors",
            "--bundle",
            path(&shipped_bundle()),
            path(&samples_csv()),
            "--out",
            path(&out),
        ],
    );
    assert!(written.status.success(), "{}", stderr(&written));
    // The training pipeline's own loader, with NumPy only.
    let probe = Command::new(python_tuf::python())
        .arg(repo_root().join("models/training/tensors_io.py"))
        .arg(&out)
        .output()
        .expect("python");
    assert!(probe.status.success(), "{}", stderr(&probe));
    let seen: serde_json::Value = serde_json::from_str(&stdout(&probe)).expect("json");
    assert_eq!(seen["shape"], serde_json::json!([30, 1, 256, 320]));
    let files: Vec<PathBuf> = seen["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("file")))
        .collect();
    let labels = ["good", "scratch", "dent", "crack", "stain"];
    let truth: std::collections::BTreeMap<PathBuf, String> = sample_frames().into_iter().collect();
    for (file, index) in files.iter().zip(seen["labels"].as_array().expect("labels")) {
        let index = index.as_u64().expect("label index") as usize;
        assert_eq!(labels[index], truth[file], "{}", file.display());
    }
    let expected = agent_tensor_digests(&shipped_bundle(), &files);
    let actual: Vec<String> = seen["sha256"]
        .as_array()
        .expect("digests")
        .iter()
        .map(|d| d.as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(actual, expected, "training tensors differ from the agent's");

    // A bilinear RGB model, for which the agent decodes large JPEGs at a reduced DCT scale:
    // the tensors follow the same decode.
    let foreign = dir.path().join("foreign.dmb");
    let manifest = repo_root().join("models/testdata/foreign/manifest.toml");
    let created = create(&[
        "--manifest",
        path(&manifest),
        "--onnx",
        path(&repo_root().join("models/testdata/foreign/brightness-rule.onnx")),
        "--out",
        path(&foreign),
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).expect("mkdir");
    for (file, _) in sample_frames().iter().take(5) {
        std::fs::copy(file, flat.join(file.file_name().expect("name"))).expect("copy");
    }
    let out = dir.path().join("rgb-tensors");
    let written = run(
        "model-bundle",
        &[
            "tensors",
            "--bundle",
            path(&foreign),
            path(&flat),
            "--out",
            path(&out),
        ],
    );
    assert!(written.status.success(), "{}", stderr(&written));
    let probe = Command::new(python_tuf::python())
        .arg(repo_root().join("models/training/tensors_io.py"))
        .arg(&out)
        .output()
        .expect("python");
    assert!(probe.status.success(), "{}", stderr(&probe));
    let seen: serde_json::Value = serde_json::from_str(&stdout(&probe)).expect("json");
    assert_eq!(seen["shape"], serde_json::json!([5, 3, 16, 16]));
    assert_eq!(seen["labels"], serde_json::json!([-1, -1, -1, -1, -1]));
    let files: Vec<PathBuf> = seen["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| PathBuf::from(f.as_str().expect("file")))
        .collect();
    let actual: Vec<String> = seen["sha256"]
        .as_array()
        .expect("digests")
        .iter()
        .map(|d| d.as_str().expect("digest").to_owned())
        .collect();
    assert_eq!(actual, agent_tensor_digests(&foreign, &files));
}
