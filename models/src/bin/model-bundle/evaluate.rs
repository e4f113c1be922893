//! `evaluate`: a bundle on labelled frames, with gates, and optionally against another bundle.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use defect_models::Bundle;
use defect_models::dataset::ImageSet;
use defect_models::evaluation::{self, EvaluateOptions, Evaluation, Gates};
use defect_models::figures::{MissKind, confusion_table, percent};
use defect_models::model_input::DecodeMode;

use crate::Outcome;
use crate::output::print;

/// Arguments of `evaluate`.
#[derive(clap::Args)]
pub struct Args {
    /// The bundle to evaluate.
    bundle: PathBuf,
    /// Labelled frames: one folder per label (capture-export's layout) or a file,label CSV.
    data: PathBuf,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (for `model-bundle card --evaluation`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Run this bundle on the same frames too, and list every frame the two decide differently.
    #[arg(long, value_name = "OTHER.dmb")]
    compare: Option<PathBuf>,
    /// Gate: lowest defect recall (share of defect frames rejected), such as 0.995.
    #[arg(long, value_name = "SHARE")]
    min_recall: Option<f64>,
    /// Gate: highest false-reject rate (share of good frames rejected), such as 0.01.
    #[arg(long, value_name = "SHARE")]
    max_false_reject: Option<f64>,
    /// Gate: lowest pass/reject accuracy.
    #[arg(long, value_name = "SHARE")]
    min_accuracy: Option<f64>,
    /// Gate: lowest recall of one class, LABEL=SHARE; repeatable.
    #[arg(long, value_name = "LABEL=SHARE")]
    min_class_recall: Vec<String>,
    /// Gate: highest 99th-percentile inference time on this box, in milliseconds.
    #[arg(long, value_name = "MS")]
    max_p99_ms: Option<f64>,
    /// Gate (with --compare): most frames the other bundle rejects and this one passes.
    #[arg(long, value_name = "N")]
    max_reject_to_pass: Option<u64>,
    /// How many of the worst misses to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    misses: usize,
    /// Decode JPEGs at full size (for an agent run with dct_scaling = false).
    #[arg(long)]
    full_decode: bool,
    /// Threads running the model.
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

/// Runs `evaluate`.
pub fn run(args: Args) -> Result<Outcome> {
    let gates = gates(&args)?;
    let bundle = Bundle::open(&args.bundle).with_context(|| args.bundle.display().to_string())?;
    let other = match &args.compare {
        Some(path) => Some(Bundle::open(path).with_context(|| path.display().to_string())?),
        None => None,
    };
    let set = ImageSet::open(&args.data)?;
    let mut options = EvaluateOptions {
        misses: args.misses,
        ..EvaluateOptions::default()
    };
    if args.full_decode {
        options.scoring.mode = DecodeMode::Full;
    }
    if let Some(jobs) = args.jobs {
        options.scoring.jobs = jobs.max(1);
    }
    let mut report = evaluation::evaluate(&bundle, &set, other.as_ref(), options)?;
    gates.apply(&mut report);
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        print(&format!("{json}\n"));
    } else {
        print(&text(&report));
    }
    Ok(if report.gates_met() {
        Outcome::Success
    } else {
        Outcome::GateNotMet
    })
}

fn gates(args: &Args) -> Result<Gates> {
    let mut gates = Gates {
        min_recall: args.min_recall,
        max_false_reject: args.max_false_reject,
        min_accuracy: args.min_accuracy,
        max_p99_ms: args.max_p99_ms,
        max_reject_to_pass: args.max_reject_to_pass,
        ..Gates::default()
    };
    for share in [args.min_recall, args.max_false_reject, args.min_accuracy]
        .into_iter()
        .flatten()
    {
        if !(0.0..=1.0).contains(&share) {
            bail!("a share gate must be between 0 and 1, got {share}");
        }
    }
    for item in &args.min_class_recall {
        let (label, value) = item
            .split_once('=')
            .with_context(|| format!("--min-class-recall {item:?} is not LABEL=SHARE"))?;
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("--min-class-recall {item:?}: {value:?} is not a number"))?;
        gates
            .min_class_recall
            .insert(label.trim().to_owned(), value);
    }
    if args.max_reject_to_pass.is_some() && args.compare.is_none() {
        bail!("--max-reject-to-pass needs --compare OTHER.dmb");
    }
    Ok(gates)
}

fn text(e: &Evaluation) -> String {
    let f = &e.figures;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (model_version {}) on {} frames from {}",
        e.bundle.name, e.bundle.version, e.bundle.model_version, e.data.frames, e.data.source
    );
    let thresholds: Vec<String> = e
        .thresholds
        .iter()
        .map(|(l, t)| format!("{l} >= {t}"))
        .collect();
    let _ = writeln!(out, "thresholds          {}", thresholds.join(", "));
    for (name, value) in f.summary_rows() {
        let _ = writeln!(out, "{name:<20}{value}");
    }
    let _ = writeln!(out, "per class           recall     precision  frames");
    for c in &f.per_class {
        let _ = writeln!(
            out,
            "  {:<17} {:<10} {:<10} {}",
            c.label,
            percent(c.recall),
            percent(c.precision),
            c.frames
        );
    }
    let _ = writeln!(out, "confusion (rows true class, columns decided class):");
    for line in confusion_table(&e.labels, &f.confusion).lines() {
        let _ = writeln!(out, "  {line}");
    }
    let l = &e.latency;
    let _ = writeln!(
        out,
        "latency             inference median {:.2} ms, p99 {:.2} ms; whole frame median {:.2} ms, p99 {:.2} ms ({} at once, decode {})",
        l.inference_median_ms,
        l.inference_p99_ms,
        l.frame_median_ms,
        l.frame_p99_ms,
        l.jobs,
        e.decode
    );
    for u in &e.unreadable {
        let _ = writeln!(out, "unreadable          {}: {}", u.file, u.error);
    }
    if !e.misses.is_empty() {
        let _ = writeln!(
            out,
            "worst misses        {} of {}",
            e.misses.len(),
            e.miss_count
        );
        for m in &e.misses {
            let _ = writeln!(
                out,
                "  {:<12} {}: {} decided {} ({:.3}; {} scored {:.3})",
                match m.kind {
                    MissKind::Escape => "escape",
                    MissKind::FalseReject => "false reject",
                    MissKind::WrongClass => "wrong class",
                },
                m.file,
                m.label,
                m.decided,
                m.confidence,
                m.label,
                m.true_score
            );
        }
    }
    if let Some(c) = &e.comparison {
        let o = &c.other_figures;
        let _ = writeln!(
            out,
            "compared with       {} {} (model_version {}): recall {} vs {}, false rejects {} vs {}, inference median {:.2} ms vs {:.2} ms",
            c.other.name,
            c.other.version,
            c.other.model_version,
            percent(f.defect_recall),
            percent(o.defect_recall),
            percent(f.false_reject_rate),
            percent(o.false_reject_rate),
            l.inference_median_ms,
            c.other_latency.inference_median_ms
        );
        let _ = writeln!(
            out,
            "flips               {} (reject to pass {}, pass to reject {}, other defect class {})",
            c.flips.len(),
            c.reject_to_pass,
            c.pass_to_reject,
            c.class_changes
        );
        for flip in &c.flips {
            let _ = writeln!(
                out,
                "  {} (true {}): {} {:?} {:.3} -> {} {:?} {:.3}",
                flip.file,
                flip.label,
                flip.other.class,
                flip.other.verdict,
                flip.other.confidence,
                flip.bundle.class,
                flip.bundle.verdict,
                flip.bundle.confidence
            );
        }
    }
    for g in &e.gates {
        let _ = writeln!(
            out,
            "gate {:<26} {} (limit {}, measured {})",
            g.gate,
            if g.met { "met" } else { "NOT MET" },
            g.limit,
            g.value
                .map_or("nothing: no such frames".into(), |v| format!("{v:.4}"))
        );
    }
    out
}
