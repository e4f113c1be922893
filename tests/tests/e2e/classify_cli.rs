//! `defect-agent classify` end to end on the shipped bundle and sample frames.

use defect_e2e::{repo_root, run, sample_frames, stderr, stdout};

fn classify_json(
    extra: &[&str],
    files: &[String],
) -> (std::process::Output, Vec<serde_json::Value>) {
    let mut args = vec!["classify", "--json"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(String::as_str));
    let out = run("defect-agent", &args);
    let lines = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    (out, lines)
}

fn assert_labelled_decisions(extra: &[&str]) {
    let samples = sample_frames();
    assert!(
        samples.len() >= 25,
        "expected about 30 sample frames, found {}",
        samples.len()
    );
    let files: Vec<String> = samples
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let (out, lines) = classify_json(extra, &files);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines.len(), samples.len());
    let mut wrong = Vec::new();
    for ((file, label), line) in samples.iter().zip(&lines) {
        let expected_result = if label == "good" { "pass" } else { "reject" };
        if line["class"] != label.as_str() || line["result"] != expected_result {
            wrong.push(format!("{}: labelled {label}, got {line}", file.display()));
        }
    }
    assert!(
        wrong.is_empty(),
        "misclassified sample frames:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_sample_frame_gets_its_labelled_decision() {
    assert_labelled_decisions(&[]);
}

#[test]
fn every_sample_frame_gets_its_labelled_decision_with_full_decode() {
    assert_labelled_decisions(&["--full-decode"]);
}

#[test]
fn json_output_carries_model_input_brightness_and_contrast() {
    let frame = repo_root().join("models/samples/0001-good.jpg");
    let (out, lines) = classify_json(&[], &[frame.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines.len(), 1, "one line per file");
    let input = &lines[0]["input"];
    for key in ["brightness", "contrast"] {
        let value = input[key]
            .as_f64()
            .unwrap_or_else(|| panic!("input.{key} missing or not a number in {}", lines[0]));
        assert!(
            (0.0..=255.0).contains(&value),
            "input.{key} = {value} is outside 0..=255"
        );
    }
}

#[test]
fn text_output_names_decision_class_confidence_and_timings() {
    let (file, label) = sample_frames().into_iter().next().expect("a sample");
    let out = run("defect-agent", &["classify", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        label.as_str(),
        "conf ",
        "decode ",
        "preprocess ",
        "inference ",
        "total ",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}

#[test]
fn malformed_images_give_clear_errors_and_the_rest_is_still_classified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, label) = sample_frames().into_iter().next().expect("a sample");
    let jpeg = std::fs::read(&good).expect("sample");

    let mut png_bomb = Vec::new();
    // A valid 1x1 PNG whose IHDR then claims 100000x100000 pixels (CRC fixed up).
    png_bomb.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_bomb.extend_from_slice(&13u32.to_be_bytes());
    png_bomb.extend_from_slice(&ihdr);
    png_bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png_bomb.extend_from_slice(&[0, 0, 0, 0]);
    png_bomb.extend_from_slice(b"IEND");
    png_bomb.extend_from_slice(&crc32(b"IEND").to_be_bytes());

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.jpg", Vec::new(), "empty"),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "notes.png",
            b"this is a text file, not a picture\n".to_vec(),
            "not a JPEG, PNG or BMP",
        ),
        ("bomb.png", png_bomb, "100000x100000"),
    ];
    let mut files = Vec::new();
    for (name, bytes, _) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        files.push(path.display().to_string());
    }
    files.push(good.display().to_string());
    files.push(dir.path().join("missing.jpg").display().to_string());

    let (out, lines) = classify_json(&[], &files);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some files failed: {}",
        stderr(&out)
    );
    assert_eq!(lines.len(), files.len(), "one line per file");
    for ((name, _, reason), line) in cases.iter().zip(&lines) {
        assert_eq!(line["result"], "error", "{name}: {line}");
        assert!(
            line["file"].as_str().is_some_and(|f| f.ends_with(name)),
            "{line}"
        );
        assert!(
            line.get("input").is_none(),
            "{name}: no input statistics on error: {line}"
        );
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{name}: {error:?} should say {reason:?}"
        );
    }
    assert_eq!(
        lines[cases.len()]["class"],
        label.as_str(),
        "the good frame is still classified"
    );
    let missing = &lines[cases.len() + 1];
    assert_eq!(missing["result"], "error");
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read")),
        "{missing}"
    );
}

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
