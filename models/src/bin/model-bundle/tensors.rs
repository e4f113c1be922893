//! `tensors`: the model-input tensors of labelled frames, for a training script.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use defect_models::Bundle;
use defect_models::dataset::ImageSet;
use defect_models::draft::ManifestDraft;
use defect_models::model_input::DecodeMode;
use defect_models::tensors;

use crate::Outcome;
use crate::output::print;

/// Arguments of `tensors`.
#[derive(clap::Args)]
pub struct Args {
    /// Frames: one folder per label, or a file,label CSV (unlabelled frames get label -1).
    data: PathBuf,
    /// The manifest (TOML) whose input and preprocessing to apply.
    #[arg(long, conflicts_with = "bundle")]
    manifest: Option<PathBuf>,
    /// Or a bundle whose manifest to apply.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Folder to write inputs.npy, labels.npy, files.txt and labels.json into.
    #[arg(long)]
    out: PathBuf,
    /// Decode JPEGs at full size (for an agent run with dct_scaling = false).
    #[arg(long)]
    full_decode: bool,
}

/// Runs `tensors`.
pub fn run(args: Args) -> Result<Outcome> {
    let manifest = match (&args.manifest, &args.bundle) {
        (Some(path), None) => ManifestDraft::from_file(path)?.provisional(),
        (None, Some(path)) => Bundle::open(path)
            .with_context(|| path.display().to_string())?
            .manifest()
            .clone(),
        _ => bail!("give --manifest FILE or --bundle FILE"),
    };
    let set = ImageSet::open(&args.data)?;
    let mode = if args.full_decode {
        DecodeMode::Full
    } else {
        DecodeMode::Agent
    };
    let summary = tensors::write(&manifest, &set, mode, &args.out)?;
    let mut text = String::new();
    for (file, why) in &summary.skipped {
        let _ = writeln!(text, "skipped {file}: {why}");
    }
    let _ = writeln!(
        text,
        "wrote {} frame(s) to {} (inputs.npy float32 {:?}, labels.npy, files.txt, labels.json)",
        summary.frames,
        args.out.display(),
        summary.shape
    );
    print(&text);
    Ok(Outcome::Success)
}
