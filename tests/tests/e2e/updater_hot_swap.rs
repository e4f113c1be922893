//! A model update while frames stream at line rate: every frame gets a decision, and the model
//! version that decides changes once, at one frame boundary. Latency figures come from the
//! hot-swap benchmark (`benches/run-hot-swap`); this test prints them for information only.

use std::time::Duration;

use defect_e2e::hot_swap::{SwapPlan, percentile, run};

#[test]
fn a_model_installed_under_load_decides_every_frame_and_switches_at_one_frame_boundary() {
    let report = run(SwapPlan {
        frames_before: 100,
        frames_after: 100,
        interval: Duration::from_millis(20),
    });
    let missing: Vec<u64> = report
        .frames
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| *p)
        .collect();
    assert!(
        missing.is_empty(),
        "frames without any decision: {missing:?}"
    );
    let results: Vec<_> = report.frames.iter().filter_map(|(_, r)| *r).collect();
    let undecided: Vec<u64> = results
        .iter()
        .filter(|r| r.result == 2)
        .map(|r| r.part)
        .collect();
    assert!(
        undecided.is_empty(),
        "no-decision results during the swap: {undecided:?}"
    );

    let versions: Vec<u64> = results.iter().map(|r| r.model_version).collect();
    let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(
        switches, 1,
        "one switch, at one frame boundary: {versions:?}"
    );
    assert_eq!(versions.first(), Some(&1));
    assert_eq!(versions.last(), Some(&2));

    let (steady, swap) = report.latencies();
    println!(
        "frames {}, swap took {:?}; steady p50 {:?} p99 {:?} ms ({} frames); during swap p50 {:?} p99 {:?} ms ({} frames)",
        results.len(),
        report.swap_time,
        percentile(&steady, 50.0),
        percentile(&steady, 99.0),
        steady.len(),
        percentile(&swap, 50.0),
        percentile(&swap, 99.0),
        swap.len()
    );
}
