//! Model-input tensors of labelled frames, written for a training script.
//!
//! This module owns `model-bundle tensors`: every frame of an image set goes through the
//! agent's own decode and preprocessing ([`ModelInput`]) and its tensor is appended to
//! `inputs.npy`, so a model is trained on exactly the numbers tract will be fed on the line.
//! Beside it: `labels.npy` (label index per frame, -1 when unlabelled), `files.txt` and
//! `labels.json`.

use std::path::{Path, PathBuf};

use defect_shared::error_chain::chain;

use crate::dataset::{DatasetError, ImageSet};
use crate::manifest::Manifest;
use crate::model_input::{DecodeMode, ModelInput};
use crate::npy::{NpyWriter, write_i64};
use crate::scoring::FrameError;

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorsSummary {
    /// Frames written.
    pub frames: usize,
    /// Shape of `inputs.npy`.
    pub shape: Vec<usize>,
    /// Frames skipped, with why.
    pub skipped: Vec<(String, String)>,
}

/// Why the tensors could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TensorsError {
    /// The image set could not be read, or its labels are not the manifest's.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// An output file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the model-input tensors of `set` under `manifest` into `out`.
pub fn write(
    manifest: &Manifest,
    set: &ImageSet,
    mode: DecodeMode,
    out: &Path,
) -> Result<TensorsSummary, TensorsError> {
    let labels = &manifest.output.labels;
    if set.is_labelled() {
        let unknown: Vec<String> = set
            .labels()
            .into_iter()
            .filter(|l| !labels.iter().any(|k| k == l))
            .map(str::to_owned)
            .collect();
        if !unknown.is_empty() {
            return Err(DatasetError::UnknownLabels {
                path: set.source.clone(),
                unknown,
                known: labels.clone(),
            }
            .into());
        }
    }
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TensorsError::Write { path, source }
    };
    std::fs::create_dir_all(out).map_err(write_error(out))?;
    let shape = &manifest.input.shape;
    // One row per frame: the input tensor without a batch axis for one tile, with it for tiles.
    let row_shape: Vec<usize> = if manifest.input.batch() == 1 {
        shape[1..].to_vec()
    } else {
        shape.clone()
    };
    let inputs_path = out.join("inputs.npy");
    let mut writer =
        NpyWriter::create(&inputs_path, &row_shape).map_err(write_error(&inputs_path))?;
    let mut input = ModelInput::with_mode(manifest, mode);
    let mut indices = Vec::new();
    let mut files = String::new();
    let mut skipped = Vec::new();
    for sample in &set.samples {
        let prepared = std::fs::read(&sample.path)
            .map_err(FrameError::Read)
            .and_then(|bytes| input.prepare(&bytes).map_err(FrameError::Classify))
            .map_err(|e| chain(&e));
        let prepared = match prepared {
            Ok(p) => p,
            Err(why) => {
                skipped.push((sample.name.clone(), why));
                continue;
            }
        };
        let view = match prepared.tensor.to_plain_array_view::<f32>() {
            Ok(view) => view,
            Err(e) => {
                skipped.push((sample.name.clone(), chain(&*e)));
                continue;
            }
        };
        // The preprocessor builds a standard-layout array, so this borrows without a copy.
        let copied;
        let values = match view.as_slice() {
            Some(values) => values,
            None => {
                copied = view.iter().copied().collect::<Vec<f32>>();
                &copied
            }
        };
        writer.push(values).map_err(write_error(&inputs_path))?;
        indices.push(
            sample
                .label
                .as_ref()
                .and_then(|l| labels.iter().position(|k| k == l))
                .map_or(-1, |i| i as i64),
        );
        files.push_str(&sample.path.display().to_string());
        files.push('\n');
    }
    let frames = writer.finish().map_err(write_error(&inputs_path))?;
    let labels_path = out.join("labels.npy");
    write_i64(&labels_path, &indices).map_err(write_error(&labels_path))?;
    let files_path = out.join("files.txt");
    std::fs::write(&files_path, files).map_err(write_error(&files_path))?;
    let names_path = out.join("labels.json");
    let names = serde_json::to_string(labels).unwrap_or_default();
    std::fs::write(&names_path, format!("{names}\n")).map_err(write_error(&names_path))?;
    let mut full_shape = vec![frames];
    full_shape.extend(row_shape);
    Ok(TensorsSummary {
        frames,
        shape: full_shape,
        skipped,
    })
}
