//! Frame path benchmark: decode, preprocess, inference and the whole path per frame, with tract,
//! beside the same model in ONNX Runtime driven by the Python pipeline a user would write.
//!
//! Run it with `benches/run-frame-path`, which creates the Python virtual environment and
//! passes `--python`. Both sides run single-threaded over the same sample frames held in memory,
//! in interleaved blocks so that the noise of a shared machine hits both alike. Prints medians
//! in milliseconds per frame and the ratio ours / ONNX Runtime.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use defect_benches::median;
use defect_models::{Bundle, DecodeOptions, gate};

#[derive(Default)]
struct Samples {
    decode: Vec<f64>,
    preprocess: Vec<f64>,
    inference: Vec<f64>,
    frame: Vec<f64>,
}

impl Samples {
    fn extend(&mut self, other: Samples) {
        self.decode.extend(other.decode);
        self.preprocess.extend(other.preprocess);
        self.inference.extend(other.inference);
        self.frame.extend(other.frame);
    }
}

struct Args {
    python: Option<PathBuf>,
    rounds: usize,
    blocks: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        python: std::env::var_os("DEFECT_BENCH_PYTHON").map(PathBuf::from),
        rounds: 5,
        blocks: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--python" => args.python = it.next().map(PathBuf::from),
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.rounds)
            }
            "--blocks" => {
                args.blocks = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(args.blocks)
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bundle =
        Bundle::open(&root.join("models/shipped/surface-classifier.dmb")).expect("shipped bundle");
    let (model, _) = gate::validate(&bundle).expect("shipped bundle passes its gate");
    let files = sample_files(&root.join("models/samples"));
    let frames: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("sample frame"))
        .collect();
    let onnx = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(onnx.path(), bundle.model()).expect("write onnx");

    println!(
        "frame path benchmark: {} frames ({}), {} blocks x {} rounds, single thread",
        frames.len(),
        dimensions(&frames[0]),
        args.blocks,
        args.rounds
    );
    let mut full = Samples::default();
    let mut dct = Samples::default();
    let mut isolation = Vec::new();
    let mut python = Samples::default();
    for _ in 0..args.blocks {
        full.extend(measure_rust(&model, &frames, false, args.rounds));
        dct.extend(measure_rust(&model, &frames, true, args.rounds));
        isolation.extend(measure_isolation(&model, &frames, args.rounds));
        if let Some(py) = &args.python {
            python.extend(measure_python(
                py,
                &root,
                onnx.path(),
                bundle.manifest(),
                &files,
                args.rounds,
            ));
        }
    }

    let py = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
    let rows = [
        (
            "decode, full size",
            median(&mut full.decode),
            py(&mut python.decode),
        ),
        (
            "decode, DCT-scaled",
            median(&mut dct.decode),
            py(&mut python.decode),
        ),
        (
            "preprocess (resize, normalise)",
            median(&mut full.preprocess),
            py(&mut python.preprocess),
        ),
        (
            "inference alone",
            median(&mut full.inference),
            py(&mut python.inference),
        ),
        (
            "whole frame, full decode",
            median(&mut full.frame),
            py(&mut python.frame),
        ),
        (
            "whole frame, DCT-scaled decode",
            median(&mut dct.frame),
            py(&mut python.frame),
        ),
    ];
    println!();
    println!(
        "{:<34} {:>12} {:>16} {:>10}",
        "median ms per frame", "tract (ours)", "ORT + Pillow", "ours/ORT"
    );
    for (name, ours, reference) in rows {
        println!(
            "{name:<34} {ours:>12.3} {reference:>16.3} {:>10.2}",
            ours / reference
        );
    }
    // The agent's workers run every frame under `catch_unwind` (panic isolation).
    let (mut plain, mut caught): (Vec<f64>, Vec<f64>) = isolation.iter().copied().unzip();
    let mut differences: Vec<f64> = isolation.iter().map(|(p, c)| (c - p) * 1000.0).collect();
    let (plain, caught) = (median(&mut plain), median(&mut caught));
    println!(
        "\npanic isolation, whole frame with and without catch_unwind, the same frame back to back: \
         {caught:.3} ms against {plain:.3} ms (ratio {:.3}); median paired difference {:+.1} µs",
        caught / plain,
        median(&mut differences)
    );
    if args.python.is_none() {
        println!(
            "\n(no --python given: run benches/run-frame-path for the ONNX Runtime reference)"
        );
    }
}

/// The whole frame in ms, plain and under `catch_unwind` as the agent's workers run it, for
/// each frame: the two run back to back, in alternating order, so drift hits both alike.
fn measure_isolation(
    model: &std::sync::Arc<defect_models::Model>,
    frames: &[Vec<u8>],
    rounds: usize,
) -> Vec<(f64, f64)> {
    let mut classifier = model.classifier().expect("classifier");
    classifier.set_decode_options(DecodeOptions::default(), false);
    let mut pairs = Vec::new();
    for round in 0..=rounds {
        for (index, bytes) in frames.iter().enumerate() {
            let mut plain = || {
                let start = Instant::now();
                classifier
                    .classify_bytes(bytes)
                    .expect("sample frame classifies");
                start.elapsed().as_secs_f64() * 1000.0
            };
            let plain_first = (round + index) % 2 == 0;
            let first_plain = if plain_first { Some(plain()) } else { None };
            let start = Instant::now();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                classifier.classify_bytes(bytes)
            }))
            .expect("sample frame does not panic")
            .expect("sample frame classifies");
            let caught = start.elapsed().as_secs_f64() * 1000.0;
            let plain = match first_plain {
                Some(ms) => ms,
                None => {
                    let start = Instant::now();
                    classifier
                        .classify_bytes(bytes)
                        .expect("sample frame classifies");
                    start.elapsed().as_secs_f64() * 1000.0
                }
            };
            if round > 0 {
                pairs.push((plain, caught));
            }
        }
    }
    pairs
}

fn measure_rust(
    model: &std::sync::Arc<defect_models::Model>,
    frames: &[Vec<u8>],
    dct: bool,
    rounds: usize,
) -> Samples {
    let mut classifier = model.classifier().expect("classifier");
    classifier.set_decode_options(DecodeOptions::default(), dct);
    let mut samples = Samples::default();
    for round in 0..=rounds {
        for bytes in frames {
            let start = Instant::now();
            let result = classifier
                .classify_bytes(bytes)
                .expect("sample frame classifies");
            let whole = start.elapsed();
            if round == 0 {
                continue; // warm-up
            }
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            samples.decode.push(ms(result.timings.decode));
            samples.preprocess.push(ms(result.timings.preprocess));
            samples.inference.push(ms(result.timings.inference));
            samples.frame.push(ms(whole));
        }
    }
    samples
}

fn measure_python(
    python: &Path,
    root: &Path,
    onnx: &Path,
    manifest: &defect_models::Manifest,
    files: &[PathBuf],
    rounds: usize,
) -> Samples {
    let output = Command::new(python)
        .arg(root.join("benches/reference/ort_frame_path.py"))
        .arg("--model")
        .arg(onnx)
        .args([
            "--input",
            manifest.input.tensor.as_deref().unwrap_or("frame"),
        ])
        .args(["--width", &manifest.input.width().to_string()])
        .args(["--height", &manifest.input.height().to_string()])
        .args(["--mean", &manifest.preprocess.mean[0].to_string()])
        .args(["--std", &manifest.preprocess.std[0].to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(files)
        .output()
        .expect("run the Python reference");
    assert!(
        output.status.success(),
        "Python reference failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("reference JSON");
    let list = |key: &str| -> Vec<f64> {
        json[key]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    Samples {
        decode: list("decode"),
        preprocess: list("preprocess"),
        inference: list("inference"),
        frame: list("frame"),
    }
}

fn sample_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("models/samples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

fn dimensions(jpeg: &[u8]) -> String {
    defect_models::frame::decode(jpeg, &DecodeOptions::default())
        .map(|f| format!("{}x{} {:?} JPEG", f.width(), f.height(), f.color()))
        .unwrap_or_else(|e| e.to_string())
}
