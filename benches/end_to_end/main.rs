//! End-to-end benchmark of the daemon: from a frame file renamed into the hot folder, as a
//! camera does, to its decision received by an MQTT subscriber on the same broker.
//!
//! Run it with `benches/run-end-to-end`, which builds `defect-agent` in the bench profile,
//! creates the Python virtual environment and passes `--agent` and `--python`. The benchmark
//! starts its own Mosquitto on a free loopback port, one subscriber, and three pipelines, each
//! with its own hot folder: `defect-agent run` (two workers, the result log, JSON decisions at
//! QoS 1) and the Python reference (`reference/hot_folder_pipeline.py`: inotify, Pillow, numpy,
//! ONNX Runtime, paho-mqtt, two worker threads), once with Pillow's full decode and once with
//! its DCT-scaled `draft` decode. Frames are the 1280x1024 samples and 2592x1944 upscales of
//! them made with Pillow at start-up.
//!
//! Per frame size and pipeline, in blocks whose order rotates so that the noise of a shared
//! machine hits every pipeline alike:
//! - latency: one frame at a time, the next after the previous decision arrived; p50 and p99;
//! - throughput: a burst of frames renamed in as fast as possible; frames per second until the
//!   last decision arrived (median over blocks), and the latency of each frame in the burst.

mod broker;
mod pipelines;
mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use defect_benches::{median, quantile};
use defect_models::{Bundle, DecodeOptions};

use broker::{Broker, Subscriber};
use pipelines::{ModelParams, Pipeline};

/// Errors here are setup or run failures, reported once the children are stopped.
type Result<T> = std::result::Result<T, String>;

/// Topic prefix of every pipeline's decisions.
const PREFIX: &str = "bench/e2e";
/// Longest wait for one decision in the latency mode.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for all decisions of a burst.
const BURST_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    agent: PathBuf,
    python: Option<PathBuf>,
    mosquitto: PathBuf,
    latency_frames: usize,
    burst_frames: usize,
    blocks: usize,
}

fn parse_args(root: &Path) -> Args {
    let mut args = Args {
        agent: root.join("target/release/defect-agent"),
        python: std::env::var_os("DEFECT_BENCH_PYTHON").map(PathBuf::from),
        mosquitto: PathBuf::from("/usr/sbin/mosquitto"),
        latency_frames: 60,
        burst_frames: 120,
        blocks: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let number =
            |v: Option<String>, default: usize| v.and_then(|v| v.parse().ok()).unwrap_or(default);
        match arg.as_str() {
            "--agent" => args.agent = it.next().map_or(args.agent, PathBuf::from),
            "--python" => args.python = it.next().map(PathBuf::from),
            "--mosquitto" => args.mosquitto = it.next().map_or(args.mosquitto, PathBuf::from),
            "--latency-frames" => args.latency_frames = number(it.next(), args.latency_frames),
            "--burst-frames" => args.burst_frames = number(it.next(), args.burst_frames),
            "--blocks" => args.blocks = number(it.next(), args.blocks),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// A set of frames of one size.
struct FrameSet {
    label: String,
    jpegs: Vec<Vec<u8>>,
}

/// Everything measured for one pipeline at one frame size.
#[derive(Default)]
struct Figures {
    latency_ms: Vec<f64>,
    throughput_fps: Vec<f64>,
    burst_latency_ms: Vec<f64>,
    no_decision: usize,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("end-to-end benchmark failed: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = parse_args(&root);
    if !args.agent.is_file() {
        return Err(format!(
            "no agent binary at {}: run benches/run-end-to-end, or pass --agent",
            args.agent.display()
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("end-to-end-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let dir = dir.path();

    // One copy of the bundle for both sides, so a model retrained meanwhile changes neither.
    let bundle_path = dir.join("bundle.dmb");
    std::fs::copy(
        root.join("models/shipped/surface-classifier.dmb"),
        &bundle_path,
    )
    .map_err(|e| format!("copy the shipped bundle: {e}"))?;
    let bundle = Bundle::open(&bundle_path).map_err(|e| format!("shipped bundle: {e}"))?;
    let model = model_params(&bundle, dir)?;

    let samples = sample_files(&root.join("models/samples"))?;
    let mut sets = vec![read_set(&samples)?];
    match &args.python {
        Some(python) => sets.push(upscaled_set(python, &root, &samples, dir)?),
        None => println!("(no --python: 5 MP frames and the Python reference are skipped)"),
    }

    let broker = Broker::start(&args.mosquitto, dir)?;
    let subscriber = Subscriber::connect(broker.port, PREFIX)?;
    let mut pipelines = vec![Pipeline::agent(
        &args.agent,
        &bundle_path,
        dir,
        broker.port,
        PREFIX,
    )?];
    if let Some(python) = &args.python {
        let script = root.join("benches/reference/hot_folder_pipeline.py");
        for draft in [false, true] {
            pipelines.push(Pipeline::python(
                python,
                &script,
                &model,
                draft,
                dir,
                broker.port,
                PREFIX,
            )?);
        }
    }
    let mut parts = 1..;
    for pipeline in &mut pipelines {
        warm_up(pipeline, &subscriber, &sets, &mut parts)?;
    }

    println!(
        "end-to-end benchmark: {} blocks; per block and size, {} frames one at a time and a \
         burst of {}; agent and Python both with 2 workers",
        args.blocks, args.latency_frames, args.burst_frames
    );
    let mut figures: Vec<Vec<Figures>> = sets
        .iter()
        .map(|_| pipelines.iter().map(|_| Figures::default()).collect())
        .collect();
    for block in 0..args.blocks {
        for (set, row) in sets.iter().zip(figures.iter_mut()) {
            for offset in 0..pipelines.len() {
                let index = (block + offset) % pipelines.len();
                let pipeline = &mut pipelines[index];
                let figures = &mut row[index];
                latency(
                    pipeline,
                    &subscriber,
                    set,
                    args.latency_frames,
                    &mut parts,
                    figures,
                )?;
                burst(
                    pipeline,
                    &subscriber,
                    set,
                    args.burst_frames,
                    &mut parts,
                    figures,
                )?;
                let fps = figures.throughput_fps.last().copied().unwrap_or(f64::NAN);
                println!(
                    "  block {} {:<10} {:<13} burst {fps:6.1} frames/s",
                    block + 1,
                    set.label,
                    pipeline.name
                );
            }
        }
    }

    let names: Vec<&str> = pipelines.iter().map(|p| p.name).collect();
    for (set, row) in sets.iter().zip(figures.iter_mut()) {
        report(set, &names, row);
    }
    println!(
        "\n(agent/X is the agent's figure over X's: above 1 for latency, or below 1 for \
         throughput, means the agent is slower)"
    );
    drop(pipelines);
    drop(subscriber);
    drop(broker);
    Ok(())
}

/// Takes the ONNX file and the preprocessing the Python reference needs out of the bundle.
fn model_params(bundle: &Bundle, dir: &Path) -> Result<ModelParams> {
    let manifest = bundle.manifest();
    let onnx = dir.join("model.onnx");
    std::fs::write(&onnx, bundle.model()).map_err(|e| format!("write onnx: {e}"))?;
    let labels = &manifest.output.labels;
    let thresholds = manifest
        .output
        .reject_threshold
        .iter()
        .filter_map(|(label, t)| labels.iter().position(|l| l == label).map(|i| (i, *t)))
        .collect();
    Ok(ModelParams {
        onnx,
        input: manifest
            .input
            .tensor
            .clone()
            .unwrap_or_else(|| "frame".to_owned()),
        width: manifest.input.width(),
        height: manifest.input.height(),
        mean: manifest.preprocess.mean.first().copied().unwrap_or(0.0),
        std: manifest.preprocess.std.first().copied().unwrap_or(1.0),
        thresholds,
    })
}

/// Until the pipeline answers (it may still be starting), frames one at a time; then a few
/// frames of every size, not measured.
fn warm_up(
    pipeline: &mut Pipeline,
    subscriber: &Subscriber,
    sets: &[FrameSet],
    parts: &mut std::ops::RangeFrom<u64>,
) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    let first = sets
        .first()
        .and_then(|s| s.jpegs.first())
        .ok_or("no frames")?;
    loop {
        pipeline.check_running()?;
        let part = next(parts);
        let staged = pipeline.stage(part, first)?;
        pipeline.drop_in(&staged)?;
        if subscriber
            .wait_for(pipeline.name, &[part], Duration::from_secs(3))
            .is_ok()
        {
            break;
        }
        if Instant::now() > until {
            return Err(format!(
                "{} gave no decision within 120 s; end of its log:\n{}",
                pipeline.name,
                pipeline.log_tail()
            ));
        }
    }
    for set in sets {
        for jpeg in set.jpegs.iter().take(4) {
            let part = next(parts);
            let staged = pipeline.stage(part, jpeg)?;
            pipeline.drop_in(&staged)?;
            subscriber.wait_for(pipeline.name, &[part], FRAME_TIMEOUT)?;
        }
    }
    Ok(())
}

/// One frame at a time: from the rename to the decision.
fn latency(
    pipeline: &mut Pipeline,
    subscriber: &Subscriber,
    set: &FrameSet,
    count: usize,
    parts: &mut std::ops::RangeFrom<u64>,
    figures: &mut Figures,
) -> Result<()> {
    pipeline.check_running()?;
    for jpeg in set.jpegs.iter().cycle().take(count) {
        let part = next(parts);
        let staged = pipeline.stage(part, jpeg)?;
        let start = Instant::now();
        pipeline.drop_in(&staged)?;
        let got = subscriber.wait_for(pipeline.name, &[part], FRAME_TIMEOUT)?;
        if let Some(received) = got.get(&part) {
            figures
                .latency_ms
                .push(received.at.duration_since(start).as_secs_f64() * 1000.0);
            figures.no_decision += usize::from(received.result == 2);
        }
    }
    Ok(())
}

/// A burst renamed in as fast as possible: frames per second until the last decision.
fn burst(
    pipeline: &mut Pipeline,
    subscriber: &Subscriber,
    set: &FrameSet,
    count: usize,
    parts: &mut std::ops::RangeFrom<u64>,
    figures: &mut Figures,
) -> Result<()> {
    pipeline.check_running()?;
    let mut staged = Vec::with_capacity(count);
    for jpeg in set.jpegs.iter().cycle().take(count) {
        let part = next(parts);
        staged.push((part, pipeline.stage(part, jpeg)?));
    }
    let start = Instant::now();
    let mut dropped = Vec::with_capacity(count);
    for (part, path) in &staged {
        pipeline.drop_in(path)?;
        dropped.push((*part, Instant::now()));
    }
    let ids: Vec<u64> = staged.iter().map(|(part, _)| *part).collect();
    let got = subscriber.wait_for(pipeline.name, &ids, BURST_TIMEOUT)?;
    let last = got.values().map(|r| r.at).max().unwrap_or(start);
    figures
        .throughput_fps
        .push(count as f64 / last.duration_since(start).as_secs_f64());
    for (part, at) in dropped {
        if let Some(received) = got.get(&part) {
            figures
                .burst_latency_ms
                .push(received.at.duration_since(at).as_secs_f64() * 1000.0);
            figures.no_decision += usize::from(received.result == 2);
        }
    }
    Ok(())
}

fn next(parts: &mut std::ops::RangeFrom<u64>) -> u64 {
    parts.next().unwrap_or(u64::MAX)
}

fn report(set: &FrameSet, names: &[&str], row: &mut [Figures]) {
    println!();
    print!("{:<34}", set.label);
    for name in names {
        print!(" {name:>13}");
    }
    for name in names.iter().skip(1) {
        print!(" {:>18}", format!("agent/{name}"));
    }
    println!();
    type Figure = fn(&mut Figures) -> f64;
    let lines: [(&str, Figure); 5] = [
        ("latency p50, ms", |f| quantile(&mut f.latency_ms, 0.5)),
        ("latency p99, ms", |f| quantile(&mut f.latency_ms, 0.99)),
        ("throughput, frames/s (median)", |f| {
            median(&mut f.throughput_fps)
        }),
        ("latency in burst p50, ms", |f| {
            quantile(&mut f.burst_latency_ms, 0.5)
        }),
        ("latency in burst p99, ms", |f| {
            quantile(&mut f.burst_latency_ms, 0.99)
        }),
    ];
    for (name, figure) in lines {
        let values: Vec<f64> = row.iter_mut().map(figure).collect();
        print!("{name:<34}");
        for v in &values {
            print!(" {v:>13.1}");
        }
        for v in values.iter().skip(1) {
            print!(" {:>18.2}", values[0] / v);
        }
        println!();
    }
    let counts: Vec<String> = row
        .iter()
        .map(|f| {
            format!(
                "{}+{} ({} no decision)",
                f.latency_ms.len(),
                f.burst_latency_ms.len(),
                f.no_decision
            )
        })
        .collect();
    println!(
        "(frames measured, one at a time + in bursts: {})",
        counts.join(", ")
    );
}

fn sample_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no .jpg in {}", dir.display()));
    }
    Ok(files)
}

fn read_set(files: &[PathBuf]) -> Result<FrameSet> {
    let jpegs = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())))
        .collect::<Result<Vec<_>>>()?;
    let label = jpegs.first().map(|j| dimensions(j)).unwrap_or_default();
    Ok(FrameSet { label, jpegs })
}

/// The samples upscaled to 2592x1944 (5 MP) with Pillow, JPEG quality 90.
fn upscaled_set(python: &Path, root: &Path, samples: &[PathBuf], dir: &Path) -> Result<FrameSet> {
    let out = dir.join("frames-5mp");
    let status = Command::new(python)
        .arg(root.join("benches/reference/upscale_frames.py"))
        .args(["--size", "2592x1944", "--quality", "90", "--out"])
        .arg(&out)
        .args(samples)
        .status()
        .map_err(|e| format!("run the upscaler: {e}"))?;
    if !status.success() {
        return Err(format!("the upscaler failed: {status}"));
    }
    let files: Vec<PathBuf> = samples
        .iter()
        .filter_map(|s| s.file_name().map(|n| out.join(n)))
        .collect();
    read_set(&files)
}

fn dimensions(jpeg: &[u8]) -> String {
    defect_models::frame::decode(jpeg, &DecodeOptions::default())
        .map(|f| format!("{}x{} JPEG", f.width(), f.height()))
        .unwrap_or_else(|e| e.to_string())
}
