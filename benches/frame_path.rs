//! Frame path benchmark: decode, preprocess, inference and the whole path per frame, with tract,
//! beside the same model in ONNX Runtime driven by the Python pipeline a user would write.
//!
//! Run it with `benches/run-frame-path`, which creates the Python virtual environment and
//! passes `--python`. Both sides run single-threaded over the same sample frames held in memory,
//! in interleaved blocks so that the noise of a shared machine hits both alike, at 1280x1024
//! (the sample frames) and at 2592x1944 (the same frames upscaled, JPEG quality 90). Prints
//! medians in milliseconds per frame and the ratio ours / ONNX Runtime; then the throughput of
//! two threads against one (two classifiers sharing one model, as the agent's two workers do),
//! and the share of the machine's one-core f32 GEMM rate (NumPy's BLAS, measured by the Python
//! reference in the same run) that each engine reaches on the model's multiply-accumulates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use defect_benches::median;
use defect_models::{Bundle, DecodeOptions, Model, gate};

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
    let onnx = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(onnx.path(), bundle.model()).expect("write onnx");
    let large = tempfile::tempdir().expect("temp dir");
    let large_files = upscale(&files, large.path(), 2592, 1944);
    let fma = multiply_accumulates(&model);

    let mut ceiling = Vec::new();
    let mut inference_ratio = Vec::new();
    for (label, files) in [("1280x1024", &files), ("2592x1944", &large_files)] {
        let frames: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).expect("frame"))
            .collect();
        println!(
            "\nframe path benchmark, {label}: {} frames ({}), {} blocks x {} rounds, single thread",
            frames.len(),
            dimensions(&frames[0]),
            args.blocks,
            args.rounds
        );
        let mut full = Samples::default();
        let mut dct = Samples::default();
        let mut isolation = Vec::new();
        let mut python = Samples::default();
        let mut one_thread = Vec::new();
        let mut two_threads = Vec::new();
        for _ in 0..args.blocks {
            full.extend(measure_rust(&model, &frames, false, args.rounds));
            dct.extend(measure_rust(&model, &frames, true, args.rounds));
            isolation.extend(measure_isolation(&model, &frames, args.rounds));
            one_thread.push(throughput(&model, &frames, 1, args.rounds));
            two_threads.push(throughput(&model, &frames, 2, args.rounds));
            if let Some(py) = &args.python {
                let (samples, gemm) = measure_python(
                    py,
                    &root,
                    onnx.path(),
                    bundle.manifest(),
                    files,
                    args.rounds,
                );
                python.extend(samples);
                ceiling.extend(gemm);
            }
        }
        print_table(&mut full, &mut dct, &mut python);
        // The agent's workers run every frame under `catch_unwind` (panic isolation).
        let (mut plain, mut caught): (Vec<f64>, Vec<f64>) = isolation.iter().copied().unzip();
        let mut differences: Vec<f64> = isolation.iter().map(|(p, c)| (c - p) * 1000.0).collect();
        let (plain, caught) = (median(&mut plain), median(&mut caught));
        println!(
            "\npanic isolation, whole frame with and without catch_unwind, the same frame back to \
             back: {caught:.3} ms against {plain:.3} ms (ratio {:.3}); median paired difference \
             {:+.1} µs",
            caught / plain,
            median(&mut differences)
        );
        let (one, two) = (median(&mut one_thread), median(&mut two_threads));
        println!(
            "throughput, the agent's decode: 1 thread {one:.1} frames/s, 2 threads {two:.1} \
             frames/s, 2 / 1 = {:.2}",
            two / one
        );
        inference_ratio.push((
            median(&mut dct.inference),
            if python.inference.is_empty() {
                f64::NAN
            } else {
                median(&mut python.inference)
            },
        ));
    }
    let gflop = 2.0 * fma / 1e9;
    let ceiling = if ceiling.is_empty() {
        f64::NAN
    } else {
        median(&mut ceiling)
    };
    let mut tract: Vec<f64> = inference_ratio.iter().map(|(t, _)| *t).collect();
    let mut ort: Vec<f64> = inference_ratio.iter().map(|(_, o)| *o).collect();
    let (tract, ort) = (median(&mut tract), median(&mut ort));
    println!(
        "\ninference: {:.1} M multiply-accumulates (tract's cost of the optimised plan); tract \
         {tract:.3} ms = {:.1} GFLOP/s, ONNX Runtime {ort:.3} ms = {:.1} GFLOP/s, tract / ONNX \
         Runtime {:.2}",
        fma / 1e6,
        gflop / tract * 1e3,
        gflop / ort * 1e3,
        tract / ort
    );
    println!(
        "one-core f32 GEMM ceiling (NumPy BLAS, 1024x1024x1024, same run): {ceiling:.1} GFLOP/s; \
         tract reaches {:.0} % of it, ONNX Runtime {:.0} %",
        100.0 * gflop / tract * 1e3 / ceiling,
        100.0 * gflop / ort * 1e3 / ceiling
    );
    if args.python.is_none() {
        println!(
            "\n(no --python given: run benches/run-frame-path for the ONNX Runtime reference)"
        );
    }
}

fn print_table(full: &mut Samples, dct: &mut Samples, python: &mut Samples) {
    let py = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
    let rows = [
        (
            "decode, full size",
            median(&mut full.decode),
            py(&mut python.decode),
        ),
        (
            "decode, as the agent does",
            median(&mut dct.decode),
            py(&mut python.decode),
        ),
        (
            "preprocess, full-size decode",
            median(&mut full.preprocess),
            py(&mut python.preprocess),
        ),
        (
            "preprocess, as the agent does",
            median(&mut dct.preprocess),
            py(&mut python.preprocess),
        ),
        (
            "inference alone",
            median(&mut dct.inference),
            py(&mut python.inference),
        ),
        (
            "whole frame, full decode",
            median(&mut full.frame),
            py(&mut python.frame),
        ),
        (
            "whole frame, as the agent does",
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
}

/// Frames per second of `threads` threads, each with its own classifier on the shared model,
/// each deciding every frame `rounds` times (after one warm-up pass), as the agent's workers do.
fn throughput(model: &Arc<Model>, frames: &[Vec<u8>], threads: usize, rounds: usize) -> f64 {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut classifier = model.classifier().expect("classifier");
                classifier.set_decode_options(DecodeOptions::default(), true);
                for bytes in frames {
                    classifier.classify_bytes(bytes).expect("warm-up");
                }
                barrier.wait();
                for _ in 0..rounds {
                    for bytes in frames {
                        classifier
                            .classify_bytes(bytes)
                            .expect("sample frame classifies");
                    }
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before it returns.
        start
    })
    .elapsed()
    .as_secs_f64()
    .recip()
        * (threads * rounds * frames.len()) as f64
}

/// Multiply-accumulates of one inference, as tract counts them on the optimised plan.
fn multiply_accumulates(model: &Model) -> f64 {
    let graph = model.plan().model();
    let mut total = 0.0;
    for node in graph.nodes() {
        let Ok(inputs) = graph.node_input_facts(node.id) else {
            continue;
        };
        let Ok(costs) = node.op.cost(&inputs) else {
            continue;
        };
        for (cost, count) in costs {
            if matches!(cost, tract_onnx::tract_core::ops::Cost::FMA(_))
                && let Ok(n) = count.to_i64()
            {
                total += n as f64;
            }
        }
    }
    total
}

/// Writes each frame upscaled to `width` x `height` (Catmull-Rom, JPEG quality 90) into `dir`.
fn upscale(files: &[PathBuf], dir: &Path, width: u32, height: u32) -> Vec<PathBuf> {
    files
        .iter()
        .map(|file| {
            let image = image::open(file).expect("sample frame").into_luma8();
            let large = image::imageops::resize(
                &image,
                width,
                height,
                image::imageops::FilterType::CatmullRom,
            );
            let path = dir.join(file.file_name().expect("file name"));
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&large)
                .expect("encode");
            path
        })
        .collect()
}

/// The whole frame in ms, plain and under `catch_unwind` as the agent's workers run it, for
/// each frame: the two run back to back, in alternating order, so drift hits both alike.
fn measure_isolation(model: &Arc<Model>, frames: &[Vec<u8>], rounds: usize) -> Vec<(f64, f64)> {
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

fn measure_rust(model: &Arc<Model>, frames: &[Vec<u8>], dct: bool, rounds: usize) -> Samples {
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
) -> (Samples, Option<f64>) {
    let output = Command::new(python)
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
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
    (
        Samples {
            decode: list("decode"),
            preprocess: list("preprocess"),
            inference: list("inference"),
            frame: list("frame"),
        },
        json["gemm_gflops"].as_f64(),
    )
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
