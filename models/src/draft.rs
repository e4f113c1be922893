//! The manifest a person writes: what they decide, with everything measurable left out.
//!
//! This module owns parsing the TOML that `model-bundle create` and `model-bundle tensors`
//! read. It holds only the decided fields as required (name and versions, input spec,
//! preprocessing, labels and defect classes, latency budget) and lets the measured ones be
//! absent: golden samples' expected scores, reject thresholds (replaced by a wanted recall),
//! the drift baseline and the provenance. A value written by hand always wins over a computed
//! one. Errors name the file, the line and the field once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::calibrate::RecallTarget;
use crate::gate::AGENT_VERSION;
use crate::manifest::{
    Baseline, FORMAT_VERSION, GoldenSample, Histogram, InputSpec, Manifest, ManifestError,
    OutputSpec, Preprocess, Provenance, ScoreKind, Validation,
};

/// Golden-sample tolerance used when the manifest sets none.
pub const DEFAULT_TOLERANCE: f32 = 0.01;

/// A manifest as written by a person; see `models/MANIFEST.md`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDraft {
    /// Bundle format version; this build's when absent.
    #[serde(default = "default_format_version")]
    pub format_version: u32,
    /// Model name.
    pub name: String,
    /// Human-readable version.
    pub version: String,
    /// Integer version that only ever increases.
    pub model_version: u64,
    /// Oldest agent that can serve the bundle; this tool's version when absent.
    #[serde(default = "default_min_agent_version")]
    pub min_agent_version: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// What the model takes.
    pub input: InputSpec,
    /// How a frame becomes the input tensor.
    pub preprocess: Preprocess,
    /// Labels, defects, and thresholds or the wanted recall.
    pub output: OutputDraft,
    /// Latency budget, tolerance and optional hand-picked golden samples.
    pub validation: ValidationDraft,
    /// A hand-written drift baseline; computed from validation frames when absent.
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// What the person states about the model's origin; digests and dates are added.
    #[serde(default)]
    pub provenance: ProvenanceDraft,
}

/// `[output]` as written by a person.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDraft {
    /// ONNX output name; the graph's first output when absent.
    #[serde(default)]
    pub tensor: Option<String>,
    /// Probabilities or logits.
    pub kind: ScoreKind,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Labels that mean the part must be rejected.
    pub defects: Vec<String>,
    /// Hand-picked reject thresholds; they win over computed ones.
    #[serde(default)]
    pub reject_threshold: BTreeMap<String, f32>,
    /// The defect recall wanted on the validation frames: one number, or one per defect label.
    #[serde(default)]
    pub target_recall: Option<RecallTarget>,
}

/// `[validation]` as written by a person.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationDraft {
    /// Largest allowed golden score difference; [`DEFAULT_TOLERANCE`] when absent.
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
    /// Median single-core inference time the model must stay below, in milliseconds.
    pub latency_budget_ms: f64,
    /// Golden samples named in the manifest; `expected` is computed when absent.
    #[serde(default)]
    pub golden: Vec<GoldenDraft>,
}

/// A golden sample named in the manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenDraft {
    /// Path of the image, relative to the manifest.
    pub file: String,
    /// Expected scores; computed by running the model when absent.
    #[serde(default)]
    pub expected: Option<Vec<f32>>,
}

/// `[provenance]` as written by a person; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceDraft {
    /// The training and validation data.
    #[serde(default)]
    pub dataset: Option<String>,
    /// The script that trained and exported the model.
    #[serde(default)]
    pub training_script: Option<String>,
    /// Source revision of the training code.
    #[serde(default)]
    pub source_revision: Option<String>,
    /// Free-form notes.
    #[serde(default)]
    pub notes: Option<String>,
}

fn default_format_version() -> u32 {
    FORMAT_VERSION
}

fn default_min_agent_version() -> String {
    AGENT_VERSION.to_owned()
}

const fn default_tolerance() -> f32 {
    DEFAULT_TOLERANCE
}

/// Why a manifest a person wrote cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// The file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a field is missing, unknown or of the wrong type.
    #[error("{}{location}: {message}", path.display())]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// `:LINE:COLUMN` where the problem is, when known.
        location: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The values are inconsistent; every problem, each with its key.
    #[error("{}: {problems}", path.display())]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// The problems, as [`ManifestError::Invalid`] lists them.
        problems: String,
    },
}

impl ManifestDraft {
    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, DraftError> {
        let text = std::fs::read_to_string(path).map_err(|source| DraftError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses manifest text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, DraftError> {
        let draft: ManifestDraft = toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(":{line}:{column}")
                })
                .unwrap_or_default();
            DraftError::Parse {
                path: path.to_owned(),
                location,
                message: e.message().trim().to_owned(),
            }
        })?;
        // The decided fields must already be consistent, before anything is computed.
        draft
            .resolve(Computed::placeholder(&draft))
            .validate()
            .map_err(|e| draft_invalid(path, e))?;
        Ok(draft)
    }

    /// The complete manifest with the computed parts filled in where the person left them out.
    pub fn resolve(&self, computed: Computed) -> Manifest {
        let mut thresholds = computed.thresholds;
        thresholds.extend(
            self.output
                .reject_threshold
                .iter()
                .map(|(k, v)| (k.clone(), *v)),
        );
        let stated = &self.provenance;
        Manifest {
            format_version: self.format_version,
            name: self.name.clone(),
            version: self.version.clone(),
            model_version: self.model_version,
            min_agent_version: self.min_agent_version.clone(),
            description: self.description.clone(),
            input: self.input.clone(),
            preprocess: self.preprocess.clone(),
            output: OutputSpec {
                tensor: self.output.tensor.clone(),
                kind: self.output.kind,
                labels: self.output.labels.clone(),
                defects: self.output.defects.clone(),
                reject_threshold: thresholds,
            },
            validation: Validation {
                tolerance: self.validation.tolerance,
                latency_budget_ms: self.validation.latency_budget_ms,
                golden: computed.golden,
            },
            baseline: self.baseline.clone().unwrap_or(computed.baseline),
            provenance: Provenance {
                dataset: stated
                    .dataset
                    .clone()
                    .unwrap_or(computed.provenance.dataset),
                training_script: stated
                    .training_script
                    .clone()
                    .unwrap_or(computed.provenance.training_script),
                source_revision: stated
                    .source_revision
                    .clone()
                    .or(computed.provenance.source_revision),
                notes: stated.notes.clone().or(computed.provenance.notes),
                ..computed.provenance
            },
            operating_point: computed.operating_point,
            files: None,
        }
    }

    /// The manifest's preprocessing and input, with placeholders for everything computed:
    /// enough to prepare input tensors and load the model.
    pub fn provisional(&self) -> Manifest {
        self.resolve(Computed::placeholder(self))
    }
}

/// Wraps a validation failure with the manifest's path.
pub fn draft_invalid(path: &Path, error: ManifestError) -> DraftError {
    let problems = match error {
        ManifestError::Invalid(problems) => problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    DraftError::Invalid {
        path: path.to_owned(),
        problems,
    }
}

/// The parts of a manifest `model-bundle create` measures.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// Reject thresholds of the defect labels without a hand-written one.
    pub thresholds: BTreeMap<String, f32>,
    /// Golden samples with their expected scores.
    pub golden: Vec<GoldenSample>,
    /// The drift baseline, used when the manifest has none.
    pub baseline: Baseline,
    /// Provenance; the person's stated fields win.
    pub provenance: Provenance,
    /// The operating point measured on the validation frames.
    pub operating_point: Option<crate::manifest::OperatingPoint>,
}

impl Computed {
    /// Placeholders that make a draft a valid manifest, for checking the decided fields.
    pub fn placeholder(draft: &ManifestDraft) -> Computed {
        let histogram = |max| Histogram {
            min: 0.0,
            max,
            counts: vec![0],
        };
        Computed {
            thresholds: draft
                .output
                .defects
                .iter()
                .map(|d| (d.clone(), 0.5))
                .collect(),
            golden: vec![GoldenSample {
                file: "golden/placeholder.png".into(),
                expected: vec![0.0; draft.output.labels.len()],
            }],
            baseline: Baseline {
                frames: 0,
                brightness: histogram(256.0),
                contrast: histogram(128.0),
                defect_score: histogram(1.0),
                reject_rate: 0.0,
            },
            provenance: Provenance {
                dataset: "not stated".into(),
                training_script: "not stated".into(),
                ..Provenance::default()
            },
            operating_point: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECIDED: &str = r#"
name = "widget-inspector"
version = "2.0"
model_version = 4

[input]
shape = [1, 3, 64, 64]
layout = "nchw"
color = "rgb"
dtype = "f32"

[preprocess]
resize = "bilinear"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[output]
kind = "logits"
labels = ["ok", "chip", "burr"]
defects = ["chip", "burr"]
target_recall = 0.995
reject_threshold = { burr = 0.7 }

[validation]
latency_budget_ms = 30.0
"#;

    #[test]
    fn decided_fields_alone_parse() {
        let draft = ManifestDraft::from_toml(DECIDED, Path::new("m.toml")).expect("parses");
        assert_eq!(draft.format_version, FORMAT_VERSION);
        assert_eq!(draft.min_agent_version, AGENT_VERSION);
        assert_eq!(draft.validation.tolerance, DEFAULT_TOLERANCE);
        assert_eq!(
            draft.output.target_recall,
            Some(RecallTarget::Overall(0.995))
        );
        let per_class = DECIDED.replace(
            "target_recall = 0.995",
            "target_recall = { chip = 0.99, burr = 0.98 }",
        );
        let draft = ManifestDraft::from_toml(&per_class, Path::new("m.toml")).expect("parses");
        assert!(matches!(
            draft.output.target_recall,
            Some(RecallTarget::PerClass(_))
        ));
    }

    #[test]
    fn explicit_values_win_over_computed_ones() {
        let draft = ManifestDraft::from_toml(DECIDED, Path::new("m.toml")).expect("parses");
        let mut computed = Computed::placeholder(&draft);
        computed.thresholds = BTreeMap::from([("chip".into(), 0.2), ("burr".into(), 0.2)]);
        let manifest = draft.resolve(computed);
        assert_eq!(manifest.output.reject_threshold["chip"], 0.2);
        assert_eq!(manifest.output.reject_threshold["burr"], 0.7);
    }

    #[test]
    fn a_missing_field_is_named_once_with_file_and_line() {
        let broken = DECIDED.replace("latency_budget_ms = 30.0", "tolerance = 0.02");
        let err = ManifestDraft::from_toml(&broken, Path::new("dir/m.toml")).expect_err("accepted");
        let text = err.to_string();
        assert!(text.starts_with("dir/m.toml:"), "{text}");
        assert!(text.contains("latency_budget_ms"), "{text}");
        assert_eq!(text.matches("latency_budget_ms").count(), 1, "{text}");
    }

    #[test]
    fn inconsistent_decided_fields_are_all_reported() {
        let broken = DECIDED
            .replace(
                "defects = [\"chip\", \"burr\"]",
                "defects = [\"chip\", \"crack\"]",
            )
            .replace("shape = [1, 3, 64, 64]", "shape = [1, 1, 64, 64]");
        let err = ManifestDraft::from_toml(&broken, Path::new("m.toml")).expect_err("accepted");
        let text = err.to_string();
        assert!(text.contains("input.shape"), "{text}");
        assert!(
            text.contains("\"crack\" is not one of output.labels"),
            "{text}"
        );
    }
}
