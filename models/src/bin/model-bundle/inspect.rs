//! `inspect` and `verify`: what a bundle holds, and whether it passes its validation gate here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use defect_models::figures::percent;
use defect_models::{Bundle, gate};

use crate::Outcome;
use crate::output::print;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Print the full manifest as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The bundle file.
    bundle: PathBuf,
}

/// Prints a bundle's summary or its manifest.
pub fn inspect(args: InspectArgs) -> Result<Outcome> {
    let path = &args.bundle;
    let bundle = Bundle::open(path).with_context(|| format!("{}", path.display()))?;
    if args.json {
        print(&String::from_utf8_lossy(
            &bundle.manifest().to_canonical_json(),
        ));
    } else {
        print(&summary(path, &bundle));
    }
    Ok(Outcome::Success)
}

/// Checks a bundle's digests and runs its gate.
pub fn verify(args: VerifyArgs) -> Result<Outcome> {
    let path = &args.bundle;
    let bundle = Bundle::open(path).with_context(|| format!("{}", path.display()))?;
    let (_, report) =
        gate::validate(&bundle).with_context(|| format!("{} refused", path.display()))?;
    print(&format!(
        "{}{}: OK ({} sha256 {})\n",
        gate_report(&report),
        path.display(),
        bundle.manifest().name,
        bundle.digest()
    ));
    Ok(Outcome::Success)
}

/// The validation gate's measurements, one line per golden sample and the latency.
pub fn gate_report(report: &gate::GateReport) -> String {
    let mut out = String::new();
    for g in &report.golden {
        let _ = writeln!(
            out,
            "golden {:<28} max |diff| {:.5}",
            g.file, g.max_abs_diff
        );
    }
    let _ = writeln!(
        out,
        "median inference {:.2} ms (budget {} ms)",
        report.median_inference_ms, report.latency_budget_ms
    );
    out
}

fn summary(path: &Path, bundle: &Bundle) -> String {
    let m = bundle.manifest();
    let pre = &m.preprocess;
    let mut out = String::new();
    let _ = writeln!(out, "bundle        {}", path.display());
    let _ = writeln!(out, "sha256        {}", bundle.digest());
    let _ = writeln!(
        out,
        "size          {} bytes (model {} bytes)",
        bundle.bytes().len(),
        bundle.model().len()
    );
    let _ = writeln!(
        out,
        "name          {} {} (model_version {})",
        m.name, m.version, m.model_version
    );
    if !m.description.is_empty() {
        let _ = writeln!(out, "description   {}", m.description);
    }
    let _ = writeln!(
        out,
        "format        {} (needs defect-agent >= {})",
        m.format_version, m.min_agent_version
    );
    let _ = writeln!(
        out,
        "input         {:?} {:?} {:?} {:?}{}",
        m.input.shape,
        m.input.layout,
        m.input.color,
        m.input.dtype,
        m.input
            .tensor
            .as_ref()
            .map(|t| format!(" tensor {t:?}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "preprocess    resize {:?}, scale {}, mean {:?}, std {:?}{}{}",
        pre.resize,
        pre.scale,
        pre.mean,
        pre.std,
        pre.roi
            .map(|r| format!(", roi {}x{}+{}+{}", r.width, r.height, r.x, r.y))
            .unwrap_or_default(),
        pre.tiles
            .map(|t| format!(", tiles {}x{}", t.rows, t.cols))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "output        {:?} {:?}",
        m.output.kind, m.output.labels
    );
    let thresholds: Vec<String> = m
        .output
        .reject_threshold
        .iter()
        .map(|(label, t)| format!("{label} >= {t}"))
        .collect();
    let _ = writeln!(out, "reject when   {}", thresholds.join(", "));
    if let Some(op) = &m.operating_point {
        let _ = writeln!(
            out,
            "operating pt  defect recall {}, false rejects {} on {} validation frames",
            percent(op.defect_recall),
            percent(op.false_reject_rate),
            op.frames
        );
    }
    let _ = writeln!(
        out,
        "validation    {} golden sample(s), tolerance {}, latency budget {} ms",
        m.validation.golden.len(),
        m.validation.tolerance,
        m.validation.latency_budget_ms
    );
    let _ = writeln!(
        out,
        "baseline      {} frames, reject rate {:.3}",
        m.baseline.frames, m.baseline.reject_rate
    );
    let p = &m.provenance;
    let _ = writeln!(out, "dataset       {}", p.dataset);
    let _ = writeln!(out, "trained by    {}", p.training_script);
    if let Some(rev) = &p.source_revision {
        let _ = writeln!(out, "revision      {rev}");
    }
    if let Some(by) = &p.created_by {
        let _ = writeln!(
            out,
            "created       by {by}{}",
            p.created
                .as_ref()
                .map(|c| format!(" on {c}"))
                .unwrap_or_default()
        );
    }
    out
}
