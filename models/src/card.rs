//! The model card: one Markdown page a quality engineer reads before a model goes on the line.
//!
//! This module owns rendering what a bundle says about itself (what it detects, its operating
//! point, the data it was calibrated on, latency budget, provenance, limits) and, when given,
//! an [`Evaluation`] on held-out frames. It writes text only.

use std::fmt::Write as _;

use crate::bundle::Bundle;
use crate::evaluation::Evaluation;
use crate::figures::{Figures, MissKind, percent};
use crate::manifest::{ColorSpace, DataRecord, Manifest, ResizeFilter};

/// The model card of `bundle`, with the held-out `evaluation` when there is one.
pub fn render(bundle: &Bundle, evaluation: Option<&Evaluation>) -> String {
    let m = bundle.manifest();
    let mut out = String::new();
    let _ = writeln!(out, "# Model card: {} {}\n", m.name, m.version);
    if !m.description.is_empty() {
        let _ = writeln!(out, "{}\n", m.description);
    }
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| model_version | {} |", m.model_version);
    let _ = writeln!(out, "| bundle sha256 | `{}` |", bundle.digest());
    let _ = writeln!(
        out,
        "| needs | defect-agent {} or newer |",
        m.min_agent_version
    );
    let _ = writeln!(
        out,
        "| size | {} bytes (model {} bytes) |\n",
        bundle.bytes().len(),
        bundle.model().len()
    );

    section_detects(&mut out, m);
    section_operating_point(&mut out, m);
    if let Some(e) = evaluation {
        section_evaluation(&mut out, bundle, e);
    }
    section_data(&mut out, m);
    section_provenance(&mut out, m);
    section_limits(&mut out, m, evaluation);
    out
}

fn section_detects(out: &mut String, m: &Manifest) {
    let _ = writeln!(out, "## What it detects\n");
    let _ = writeln!(out, "| label | meaning | reject when its score reaches |");
    let _ = writeln!(out, "|---|---|---|");
    for label in &m.output.labels {
        match m.output.reject_threshold.get(label) {
            Some(t) => {
                let _ = writeln!(out, "| {label} | defect: the part is rejected | {t} |");
            }
            None => {
                let _ = writeln!(out, "| {label} | good part | |");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nA part is rejected when any defect score reaches its threshold; the decided class is \
         the highest such score. Otherwise it passes. The line's PLC treats a missing or \"no \
         decision\" message as a reject.\n"
    );
}

fn section_operating_point(out: &mut String, m: &Manifest) {
    let Some(op) = &m.operating_point else {
        return;
    };
    let _ = writeln!(out, "## Operating point (validation frames)\n");
    if let Some(target) = &op.target_recall {
        let _ = writeln!(
            out,
            "Thresholds chosen for a defect recall of {} on {} labelled validation frames.\n",
            serde_json::to_string(target).unwrap_or_default(),
            op.frames
        );
    }
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let _ = writeln!(out, "| defect recall | {} |", percent(op.defect_recall));
    let _ = writeln!(
        out,
        "| false-reject rate | {} |",
        percent(op.false_reject_rate)
    );
    let _ = writeln!(
        out,
        "| pass/reject accuracy | {} |\n",
        percent(Some(op.pass_reject_accuracy))
    );
    confusion(out, &m.output.labels, &op.confusion);
}

fn section_evaluation(out: &mut String, bundle: &Bundle, e: &Evaluation) {
    let m = bundle.manifest();
    let _ = writeln!(out, "## Held-out evaluation\n");
    if e.bundle.sha256 != bundle.digest() {
        let _ = writeln!(
            out,
            "**This evaluation is of another bundle**: {} {} (sha256 `{}`).\n",
            e.bundle.name,
            e.bundle.version,
            short(&e.bundle.sha256)
        );
    }
    let _ = writeln!(
        out,
        "{} frames from `{}` (fingerprint `{}`), decoded as the agent does ({}).\n",
        e.data.frames,
        e.data.source,
        short(&e.data.sha256),
        e.decode
    );
    figures_table(out, &e.figures);
    let _ = writeln!(
        out,
        "| class | frames | recall | precision |\n|---|---|---|---|"
    );
    for c in &e.figures.per_class {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            c.label,
            c.frames,
            percent(c.recall),
            percent(c.precision)
        );
    }
    let _ = writeln!(out);
    confusion(out, &m.output.labels, &e.figures.confusion);
    let l = &e.latency;
    let _ = writeln!(
        out,
        "Latency on the evaluating box ({} frame(s) at once): inference median {:.2} ms, p99 {:.2} ms; \
         whole frame (decode, preprocess, inference) median {:.2} ms, p99 {:.2} ms. \
         Latency budget in the bundle: {} ms.\n",
        l.jobs,
        l.inference_median_ms,
        l.inference_p99_ms,
        l.frame_median_ms,
        l.frame_p99_ms,
        m.validation.latency_budget_ms
    );
    if !e.misses.is_empty() {
        let _ = writeln!(
            out,
            "Worst misses ({} of {}):\n\n| file | true | decided | kind | confidence |\n|---|---|---|---|---|",
            e.misses.len(),
            e.miss_count
        );
        for miss in &e.misses {
            let kind = match miss.kind {
                MissKind::Escape => "escape",
                MissKind::FalseReject => "false reject",
                MissKind::WrongClass => "wrong class",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {kind} | {:.3} |",
                miss.file, miss.label, miss.decided, miss.confidence
            );
        }
        let _ = writeln!(out);
    }
    if !e.gates.is_empty() {
        let _ = writeln!(out, "| gate | limit | value | met |\n|---|---|---|---|");
        for g in &e.gates {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                g.gate,
                g.limit,
                g.value
                    .map_or("not measurable".into(), |v| format!("{v:.4}")),
                if g.met { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(out);
    }
}

fn section_data(out: &mut String, m: &Manifest) {
    let p = &m.provenance;
    let _ = writeln!(out, "## Data\n");
    let _ = writeln!(out, "- Training data: {}", p.dataset);
    if let Some(v) = &p.validation_data {
        let _ = writeln!(
            out,
            "- Validation frames (thresholds, baseline): {}",
            record(v)
        );
    }
    if let Some(g) = &p.golden_data {
        let _ = writeln!(out, "- Golden samples: {}", record(g));
    }
    let b = &m.baseline;
    let _ = writeln!(
        out,
        "- Drift baseline: {} frames, reject rate {:.2} %; brightness mostly {}, contrast mostly {} \
         (model-input pixels, 0-255)\n",
        b.frames,
        b.reject_rate * 100.0,
        bulk(&b.brightness),
        bulk(&b.contrast)
    );
}

fn section_provenance(out: &mut String, m: &Manifest) {
    let p = &m.provenance;
    let _ = writeln!(out, "## Provenance\n");
    let _ = writeln!(out, "- Trained by: {}", p.training_script);
    if let Some(rev) = &p.source_revision {
        let _ = writeln!(out, "- Source revision: {rev}");
    }
    if let Some(sha) = &p.onnx_sha256 {
        let _ = writeln!(out, "- ONNX sha256: `{sha}`");
    }
    if let Some(by) = &p.created_by {
        let _ = writeln!(
            out,
            "- Bundle made by {by}{}",
            p.created
                .as_ref()
                .map(|c| format!(" on {c}"))
                .unwrap_or_default()
        );
    }
    if let Some(notes) = &p.notes {
        let _ = writeln!(out, "- Notes: {notes}");
    }
    let _ = writeln!(out);
}

fn section_limits(out: &mut String, m: &Manifest, evaluation: Option<&Evaluation>) {
    let _ = writeln!(out, "## Limits\n");
    let input = &m.input;
    let pre = &m.preprocess;
    let color = match input.color {
        ColorSpace::Gray => "gray",
        ColorSpace::Rgb => "RGB",
    };
    let resize = match pre.resize {
        ResizeFilter::Area => "area (block mean)",
        ResizeFilter::Bilinear => "bilinear",
        ResizeFilter::Lanczos3 => "Lanczos3",
        ResizeFilter::Nearest => "nearest",
    };
    let _ = writeln!(
        out,
        "- It sees the frame as a {}x{} {color} image ({resize} resize{}{}); a defect smaller than \
         about one model-input pixel may not be visible to it.",
        input.width(),
        input.height(),
        pre.roi
            .map(|r| format!(", region {}x{} at ({}, {})", r.width, r.height, r.x, r.y))
            .unwrap_or_default(),
        pre.tiles
            .map(|t| format!(", {}x{} tiles", t.rows, t.cols))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "- It knows only the labels above: any other defect is decided as the closest of them, \
         possibly as good."
    );
    let _ = writeln!(
        out,
        "- Its figures hold for frames like its validation data; the agent raises a `drift` \
         alarm when live frames move away from the baseline (lighting, lens, a new product)."
    );
    if let Some(e) = evaluation {
        let thin: Vec<String> = e
            .figures
            .per_class
            .iter()
            .filter(|c| c.frames < 30)
            .map(|c| format!("{} ({} frames)", c.label, c.frames))
            .collect();
        if !thin.is_empty() {
            let _ = writeln!(
                out,
                "- Few held-out frames, so those figures are rough: {}.",
                thin.join(", ")
            );
        }
        if !e.unreadable.is_empty() {
            let _ = writeln!(
                out,
                "- {} evaluation frame(s) could not be read and are not counted.",
                e.unreadable.len()
            );
        }
    }
    let _ = writeln!(out);
}

fn figures_table(out: &mut String, f: &Figures) {
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    for (name, value) in f.summary_rows() {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    let _ = writeln!(out);
}

fn confusion(out: &mut String, labels: &[String], matrix: &[Vec<u64>]) {
    let _ = write!(out, "| true \\ decided |");
    for l in labels {
        let _ = write!(out, " {l} |");
    }
    let _ = write!(out, "\n|---|");
    for _ in labels {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    for (label, row) in labels.iter().zip(matrix) {
        let _ = write!(out, "| **{label}** |");
        for count in row {
            let _ = write!(out, " {count} |");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn record(r: &DataRecord) -> String {
    format!(
        "{} images from `{}` (fingerprint `{}`)",
        r.frames,
        r.source,
        short(&r.sha256)
    )
}

/// The range of bins holding the middle 90 % of a histogram's frames.
fn bulk(h: &crate::manifest::Histogram) -> String {
    let total: u64 = h.counts.iter().sum();
    if total == 0 || h.counts.is_empty() {
        return "unknown".into();
    }
    let width = (h.max - h.min) / h.counts.len() as f64;
    let (mut low, mut high) = (0, h.counts.len() - 1);
    let mut seen = 0;
    for (i, c) in h.counts.iter().enumerate() {
        seen += c;
        if seen as f64 > total as f64 * 0.05 {
            low = i;
            break;
        }
    }
    seen = 0;
    for (i, c) in h.counts.iter().enumerate().rev() {
        seen += c;
        if seen as f64 > total as f64 * 0.05 {
            high = i;
            break;
        }
    }
    format!(
        "{:.0}-{:.0}",
        h.min + width * low as f64,
        h.min + width * (high + 1) as f64
    )
}
