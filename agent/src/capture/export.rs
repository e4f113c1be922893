//! `defect-agent capture-export`: the captured set in a layout training scripts read.
//!
//! This module owns the export layout: one folder per decided class label holding the images
//! (`<to>/<label>/<id>.<ext>`, the class-folder layout of common image-folder loaders), and
//! `<to>/captured.csv` with one row per image: its path relative to `<to>`, the capture
//! metadata, and one score column per label. The decided label is the model's, not a ground
//! truth: reviewers move files between folders before training.

use std::path::{Path, PathBuf};

use super::store::{CaptureError, CaptureStore};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Images written.
    pub images: usize,
    /// The CSV file.
    pub csv: PathBuf,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The target folder exists and is not empty.
    #[error("{0} is not empty; export into a new folder")]
    NotEmpty(PathBuf),
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] CaptureError),
    /// Writing the export failed.
    #[error("{path}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_owned(),
        source,
    }
}

/// A CSV field, quoted when it needs to be.
fn field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Exports the store in `store_dir` into the new or empty folder `to`.
pub fn export(store_dir: &Path, to: &Path) -> Result<ExportSummary, ExportError> {
    if to.exists()
        && std::fs::read_dir(to)
            .map_err(write_error(to))?
            .next()
            .is_some()
    {
        return Err(ExportError::NotEmpty(to.to_owned()));
    }
    // Read only: the agent may be writing to the store meanwhile.
    let store = CaptureStore::read_only(store_dir)?;
    let items = store.list()?;
    let labels: Vec<String> = items
        .first()
        .map(|m| m.scores.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default();
    let mut csv = String::from(
        "file,id,station,part,reason,result,label,model,model_version,acquired_ms,captured_ms,sha256,uploaded",
    );
    for label in &labels {
        csv.push_str(&format!(",score_{}", field(label)));
    }
    csv.push('\n');
    for meta in &items {
        let label = if meta.label.is_empty() {
            "unlabelled"
        } else {
            meta.label.as_str()
        };
        let folder = to.join(label);
        std::fs::create_dir_all(&folder).map_err(write_error(&folder))?;
        let target = folder.join(&meta.image);
        std::fs::copy(store.path(&meta.image), &target).map_err(write_error(&target))?;
        let row = [
            format!("{label}/{}", meta.image),
            meta.id.clone(),
            meta.station.clone(),
            meta.part.to_string(),
            meta.reason.name().to_owned(),
            meta.result.clone(),
            meta.label.clone(),
            meta.model.clone(),
            meta.model_version.to_string(),
            meta.acquired_ms.to_string(),
            meta.captured_ms.to_string(),
            meta.sha256.clone(),
            u8::from(store.is_uploaded(&meta.id)).to_string(),
        ];
        let mut line: Vec<String> = row.iter().map(|v| field(v)).collect();
        for label in &labels {
            let score = meta
                .scores
                .iter()
                .find(|(l, _)| l == label)
                .map_or(String::new(), |(_, s)| format!("{s:.6}"));
            line.push(score);
        }
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    std::fs::create_dir_all(to).map_err(write_error(to))?;
    let path = to.join("captured.csv");
    std::fs::write(&path, csv).map_err(write_error(&path))?;
    Ok(ExportSummary {
        images: items.len(),
        csv: path,
    })
}
