//! Hot swap under load: the agent's decision latency while `model-updater` installs a new model
//! version, beside the steady-state latency measured in the same run.
//!
//! Each run starts a box (Mosquitto, `defect-agent`, `model-updater`, a repository on a local
//! HTTP server), streams frames into the hot folder at line rate, starts an update in the
//! middle and keeps streaming. Latency is the agent's own arrival-to-decision time (`lat` in
//! the decision). The swap window runs from the start of the update to one second after the new
//! version was announced. Reported: medians over the runs of each run's p50 and p99, and the
//! ratio swap/steady. Run with `benches/run-hot-swap [--runs N] [--fps F] [--frames N]`.

use std::time::Duration;

use defect_e2e::hot_swap::{SwapPlan, percentile, run};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let runs = arg("--runs", 5);
    let fps = arg("--fps", 50).max(1);
    let frames = arg("--frames", 500);
    let plan = SwapPlan {
        frames_before: frames,
        frames_after: frames,
        interval: Duration::from_micros(1_000_000 / fps),
    };
    let mut steady_p50 = Vec::new();
    let mut steady_p99 = Vec::new();
    let mut swap_p50 = Vec::new();
    let mut swap_p99 = Vec::new();
    let mut swap_ms = Vec::new();
    for i in 0..runs {
        let report = run(plan);
        let missing = report.frames.iter().filter(|(_, r)| r.is_none()).count();
        let undecided = report
            .frames
            .iter()
            .filter(|(_, r)| r.is_some_and(|r| r.result == 2))
            .count();
        let (steady, swap) = report.latencies();
        let (sp50, sp99) = (percentile(&steady, 50.0), percentile(&steady, 99.0));
        let (wp50, wp99) = (percentile(&swap, 50.0), percentile(&swap, 99.0));
        println!(
            "run {i}: {} frames ({} in the swap window), {missing} without decision, {undecided} no-decision; swap {:?}; steady p50 {sp50:?} p99 {sp99:?} ms; swap p50 {wp50:?} p99 {wp99:?} ms",
            report.frames.len(),
            swap.len(),
            report.swap_time
        );
        steady_p50.push(sp50.unwrap_or(0));
        steady_p99.push(sp99.unwrap_or(0));
        swap_p50.push(wp50.unwrap_or(0));
        swap_p99.push(wp99.unwrap_or(0));
        swap_ms.push(report.swap_time.as_millis() as u64);
    }
    let (s50, s99) = (median(&mut steady_p50), median(&mut steady_p99));
    let (w50, w99) = (median(&mut swap_p50), median(&mut swap_p99));
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    println!();
    println!("{runs} runs at {fps} frames/s, {frames} frames before and after; medians over runs:");
    println!("| window | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!("| steady state | {s50} | {s99} |");
    println!("| during the swap | {w50} | {w99} |");
    println!(
        "| ratio swap/steady | {:.2} | {:.2} |",
        ratio(w50, s50),
        ratio(w99, s99)
    );
    println!(
        "update start to new version served: median {} ms",
        median(&mut swap_ms)
    );
}
