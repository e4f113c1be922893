//! Where tract spends its time on a model: the per-operator profile of the optimised plan the
//! agent's workers run.
//!
//! Run it with `benches/run-op-profile [--bundle B] [--runs N]` (default: the shipped bundle,
//! 300 runs after 30 warm-up runs, one thread). Every node of the plan is timed on every run,
//! through tract's own evaluation hook; the table lists each node's median, its share of the
//! sum of medians and, for the whole plan, the median of plain runs (no timing hook). Pair it
//! with `reference/ort_profile.py` for ONNX Runtime's profile of the same graph, which also
//! counts the graph's multiply-accumulates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use defect_benches::median;
use defect_models::{Bundle, Model};
use tract_onnx::prelude::*;

struct Args {
    bundle: PathBuf,
    runs: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        bundle: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/shipped/surface-classifier.dmb"),
        runs: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bundle" => {
                if let Some(path) = it.next() {
                    args.bundle = PathBuf::from(path);
                }
            }
            "--runs" => args.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.runs),
            // `cargo bench` passes --bench; other flags are not ours.
            _ => {}
        }
    }
    args
}

fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let bundle = Bundle::open(&args.bundle)?;
    let model = Model::load(&bundle)?;
    let plan = model.plan();
    let shape = model.manifest().input.shape.clone();
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
        .collect();
    let input = Tensor::from_shape(&shape, &values)?;
    let mut state = plan.spawn()?;
    for _ in 0..30 {
        state.run(tvec!(input.clone().into()))?;
    }

    let mut plain = Vec::with_capacity(args.runs);
    let mut per_node: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        state.run(tvec!(input.clone().into()))?;
        plain.push(start.elapsed().as_secs_f64() * 1e3);
        state.run_plan_with_eval(
            tvec!(input.clone().into()),
            |ctx, op_state, node, inputs| {
                let start = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                per_node
                    .entry(node.id)
                    .or_default()
                    .push(start.elapsed().as_secs_f64() * 1e3);
                out
            },
        )?;
    }

    let graph = plan.model();
    let mut rows: Vec<(f64, usize)> = per_node
        .iter_mut()
        .map(|(id, times)| (median(times), *id))
        .collect();
    let total: f64 = rows.iter().map(|(t, _)| t).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let whole = median(&mut plain);
    println!(
        "{} ({}), input {:?}: median run {:.3} ms over {} runs; sum of node medians {:.3} ms",
        model.manifest().name,
        bundle.digest().get(..12).unwrap_or_default(),
        shape,
        whole,
        args.runs,
        total
    );
    println!("| node | operator | median, ms | share |");
    println!("|---|---|---|---|");
    for (time, id) in rows {
        let node = graph.node(id);
        if time < 0.0005 {
            continue;
        }
        println!(
            "| {} | {} | {:.3} | {:.1} % |",
            node.name,
            node.op().name(),
            time,
            100.0 * time / total
        );
    }
    Ok(())
}
