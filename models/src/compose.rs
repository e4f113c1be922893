//! Composing a bundle from a person's manifest, an ONNX file and images.
//!
//! This module owns what `model-bundle create` computes so that nobody types a number: the
//! golden samples' expected scores (run through the validation gate's own path), the reject
//! thresholds for the wanted recall and the operating point they give, the drift baseline, and
//! the provenance (digests of the ONNX file and of the data, tool, date). Hand-written values
//! in the manifest win. It does not run the validation gate on the result; the caller does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::{Bundle, BundleError, sha256_hex};
use crate::calibrate::{self, CalibrateError};
use crate::classifier::{ClassifyError, Model, ModelError};
use crate::dataset::{DatasetError, Fingerprint, ImageSet, Sample};
use crate::decision::DecisionRule;
use crate::draft::{Computed, DraftError, ManifestDraft, draft_invalid};
use crate::figures::{self, Figures};
use crate::manifest::{DataRecord, GoldenSample, OperatingPoint, Provenance};
use crate::scoring::{self, ScoredSet, ScoringOptions};

/// Golden samples taken per label from a labelled folder when no limit is given.
pub const DEFAULT_GOLDEN_PER_LABEL: usize = 2;
/// Most golden samples a bundle may carry: the gate runs every one before a model serves.
pub const MAX_GOLDEN: usize = 100;

/// What `model-bundle create` is given.
#[derive(Debug, Clone)]
pub struct ComposeInputs {
    /// The manifest file, for its folder and for error messages.
    pub manifest_path: PathBuf,
    /// The parsed manifest.
    pub draft: ManifestDraft,
    /// The ONNX file.
    pub onnx_path: PathBuf,
    /// Golden images: files, or folders (one sub-folder per label, or flat).
    pub golden: Vec<PathBuf>,
    /// Images taken per label from golden folders (and from the validation frames when no
    /// golden image is named anywhere).
    pub golden_per_label: usize,
    /// Labelled validation frames: a folder per label or a `file,label` CSV.
    pub validation: Option<PathBuf>,
    /// How the validation frames are run.
    pub scoring: ScoringOptions,
    /// The creation time to record (RFC 3339).
    pub created: String,
}

/// What was computed, for the tool to print.
#[derive(Debug, Clone)]
pub struct ComposeReport {
    /// Defect labels whose threshold was computed (the others were written by hand).
    pub computed_thresholds: Vec<String>,
    /// Figures on the labelled validation frames at the final thresholds.
    pub operating_point: Option<Figures>,
    /// Validation frames that could not be read, with their errors.
    pub unreadable: Vec<(String, String)>,
    /// Recall targets the validation frames are too few to support, in words.
    pub thin_support: Vec<String>,
    /// Golden samples whose decided class differs from the label of their folder.
    pub golden_misdecided: Vec<(String, String, String)>,
    /// Whether the drift baseline was computed (rather than written by hand).
    pub baseline_computed: bool,
    /// How many golden samples the bundle carries.
    pub golden_count: usize,
    /// The labels of the bundle, in order.
    pub labels: Vec<String>,
}

/// Why a bundle could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The manifest is unusable.
    #[error(transparent)]
    Draft(#[from] DraftError),
    /// A file could not be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Images could not be listed or their labels do not fit the model.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The ONNX model does not load with the manifest's input and output.
    #[error("{}", path.display())]
    Model {
        /// The ONNX file.
        path: PathBuf,
        /// What tract said.
        source: ModelError,
    },
    /// Thresholds could not be chosen.
    #[error("{}", path.display())]
    Calibrate {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        source: CalibrateError,
    },
    /// A golden image could not be run through the model.
    #[error("golden sample {file}")]
    Golden {
        /// The image.
        file: String,
        /// Why it failed.
        #[source]
        source: ClassifyError,
    },
    /// Something the bundle needs was not given.
    #[error("{}: {what}", path.display())]
    Missing {
        /// The manifest file.
        path: PathBuf,
        /// What is missing and how to give it.
        what: String,
    },
    /// Too many golden samples.
    #[error(
        "{count} golden samples, at most {MAX_GOLDEN} are allowed (the agent runs every one before a model serves); use --golden-per-label or fewer files"
    )]
    TooManyGolden {
        /// How many were named.
        count: usize,
    },
    /// The bundle could not be built.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Computes every missing number and builds the bundle.
pub fn compose(inputs: &ComposeInputs) -> Result<(Bundle, ComposeReport), ComposeError> {
    let draft = &inputs.draft;
    let manifest_path = &inputs.manifest_path;
    let onnx = read(&inputs.onnx_path)?;
    let onnx_sha256 = sha256_hex(&onnx);
    let model = Model::from_onnx(draft.provisional(), &onnx, &onnx_sha256).map_err(|source| {
        ComposeError::Model {
            path: inputs.onnx_path.clone(),
            source,
        }
    })?;
    let labels = draft.output.labels.clone();

    let validation = match &inputs.validation {
        Some(path) => {
            let set = ImageSet::open(path)?;
            if set.is_labelled() {
                set.check_labels(&labels)?;
            }
            let scored = scoring::score_set(&model, &set, inputs.scoring).map_err(|source| {
                ComposeError::Model {
                    path: inputs.onnx_path.clone(),
                    source,
                }
            })?;
            Some((set, scored))
        }
        None => None,
    };
    let labelled: Vec<(usize, &[f32])> = validation
        .as_ref()
        .map(|(_, scored)| {
            scored
                .scored(&labels)
                .filter_map(|(_, label, s)| label.map(|l| (l, s.scores.as_slice())))
                .collect()
        })
        .unwrap_or_default();
    let thresholds = calibrate::choose_thresholds(
        &labels,
        &draft.output.defects,
        &draft.output.reject_threshold,
        draft.output.target_recall.as_ref(),
        &labelled,
    )
    .map_err(|source| ComposeError::Calibrate {
        path: manifest_path.clone(),
        source,
    })?;
    let computed_thresholds: Vec<String> = draft
        .output
        .defects
        .iter()
        .filter(|d| !draft.output.reject_threshold.contains_key(*d))
        .cloned()
        .collect();

    // The rule at the final thresholds, for the operating point and the baseline.
    let mut computed = Computed::placeholder(draft);
    computed.thresholds = thresholds.clone();
    let rule = DecisionRule::new(&draft.resolve(computed.clone()));
    let operating_point =
        (!labelled.is_empty()).then(|| figures::figures(&labels, &rule, labelled.iter().copied()));

    let baseline_computed = draft.baseline.is_none();
    if let Some((_, scored)) = &validation {
        computed.baseline = calibrate::baseline(
            &rule,
            scored
                .scored(&labels)
                .map(|(_, _, s)| (&s.stats, s.scores.as_slice())),
        );
    } else if baseline_computed {
        return Err(ComposeError::Missing {
            path: manifest_path.clone(),
            what: "baseline: is missing; give --validation DATA (frames as the camera takes them) to compute it, or write [baseline] by hand".into(),
        });
    }

    let (golden, golden_bytes, golden_report) =
        golden_samples(inputs, &model, validation.as_ref().map(|(set, _)| set))?;
    computed.golden = golden;
    computed.operating_point = operating_point.as_ref().map(|f| OperatingPoint {
        frames: f.frames,
        target_recall: draft.output.target_recall.clone(),
        defect_recall: f.defect_recall,
        false_reject_rate: f.false_reject_rate,
        pass_reject_accuracy: f.pass_reject_accuracy,
        confusion: f.confusion.clone(),
    });
    // A manifest that states every value is bundled exactly as written (and so byte for byte
    // reproducibly); once the tool measured anything, the provenance records what and when.
    let measured =
        validation.is_some() || golden_report.computed > 0 || !computed_thresholds.is_empty();
    computed.provenance = if measured {
        provenance(
            inputs,
            &onnx_sha256,
            validation.as_ref(),
            &golden_report.fingerprint,
        )
    } else {
        Computed::placeholder(draft).provenance
    };
    let manifest = draft.resolve(computed);
    manifest
        .validate()
        .map_err(|e| draft_invalid(manifest_path, e))?;
    let bundle = Bundle::create(manifest, onnx, &golden_bytes)?;
    let unreadable = validation
        .as_ref()
        .map(|(_, scored)| {
            scored
                .failures()
                .map(|(s, e)| (s.name.clone(), e.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let thin_support = operating_point
        .as_ref()
        .map(|f| thin_support(draft.output.target_recall.as_ref(), f, &computed_thresholds))
        .unwrap_or_default();
    Ok((
        bundle,
        ComposeReport {
            thin_support,
            computed_thresholds,
            operating_point,
            unreadable,
            golden_misdecided: golden_report.misdecided,
            baseline_computed,
            golden_count: golden_bytes.len(),
            labels,
        },
    ))
}

/// Defect frames needed to show a recall of `target` with 95 % confidence when none is missed
/// (the "rule of three": (1 - target)^n <= 0.05); `None` for a target of 1.
pub fn frames_to_show_recall(target: f64) -> Option<u64> {
    (target < 1.0 && target > 0.0).then(|| (0.05f64.ln() / target.ln()).ceil() as u64)
}

/// Which recall targets rest on too few validation frames to be trusted on new frames.
fn thin_support(
    target: Option<&crate::calibrate::RecallTarget>,
    figures: &Figures,
    computed: &[String],
) -> Vec<String> {
    use crate::calibrate::RecallTarget;
    let mut out = Vec::new();
    let mut check = |what: String, target: f64, frames: u64| {
        if let Some(needed) = frames_to_show_recall(target)
            && frames < needed
        {
            out.push(format!(
                "{frames} {what} frame(s) cannot show a recall of {:.2} % (with no escape, {needed} are needed for 95 % confidence): the thresholds may give less on new frames; add labelled defect frames to --validation",
                target * 100.0
            ));
        }
    };
    match target {
        Some(RecallTarget::Overall(r)) if !computed.is_empty() => {
            check("defect".into(), *r, figures.defect_frames);
        }
        Some(RecallTarget::PerClass(targets)) => {
            for class in figures
                .per_class
                .iter()
                .filter(|c| computed.contains(&c.label))
            {
                if let Some(r) = targets.get(&class.label) {
                    check(format!("{:?}", class.label), *r, class.frames);
                }
            }
        }
        _ => {}
    }
    out
}

/// The name a golden image gets in the bundle: its file name, after its label when it has one
/// (`scratch-0012.jpg`), so that equal file names in two label folders stay apart.
fn golden_key(sample: &Sample) -> String {
    let file = sample
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| sample.name.replace('/', "-"));
    match &sample.label {
        Some(label) => format!("{label}-{file}"),
        None => file,
    }
}

struct GoldenReport {
    misdecided: Vec<(String, String, String)>,
    computed: usize,
    fingerprint: Option<DataRecord>,
}

type GoldenParts = (Vec<GoldenSample>, BTreeMap<String, Vec<u8>>, GoldenReport);

/// The golden samples with their expected scores, computed on the gate's path where the
/// manifest gives none.
fn golden_samples(
    inputs: &ComposeInputs,
    model: &Arc<Model>,
    validation: Option<&ImageSet>,
) -> Result<GoldenParts, ComposeError> {
    let base = inputs
        .manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned();
    // (key in the manifest, where the bytes are, label, expected written by hand)
    let mut wanted: Vec<(String, Sample, Option<Vec<f32>>)> = Vec::new();
    for g in &inputs.draft.validation.golden {
        let sample = Sample {
            path: base.join(&g.file),
            name: g.file.clone(),
            label: None,
        };
        wanted.push((g.file.clone(), sample, g.expected.clone()));
    }
    let mut sets = Vec::new();
    for path in &inputs.golden {
        let is_csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if path.is_dir() || is_csv {
            sets.push(ImageSet::open(path)?.take_per_label(inputs.golden_per_label));
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            sets.push(ImageSet {
                source: path.clone(),
                samples: vec![Sample {
                    path: path.clone(),
                    name,
                    label: None,
                }],
            });
        }
    }
    if wanted.is_empty()
        && sets.is_empty()
        && let Some(set) = validation
    {
        sets.push(set.take_per_label(inputs.golden_per_label));
    }
    for set in &sets {
        for sample in &set.samples {
            wanted.push((golden_key(sample), sample.clone(), None));
        }
    }
    if wanted.is_empty() {
        return Err(ComposeError::Missing {
            path: inputs.manifest_path.clone(),
            what: "validation.golden: no golden sample; give --golden DIR (or files), --validation DATA, or [[validation.golden]] entries".into(),
        });
    }
    if wanted.len() > MAX_GOLDEN {
        return Err(ComposeError::TooManyGolden {
            count: wanted.len(),
        });
    }
    let mut classifier = model.classifier().map_err(|source| ComposeError::Model {
        path: inputs.onnx_path.clone(),
        source,
    })?;
    let labels = &inputs.draft.output.labels;
    let mut golden = Vec::new();
    let mut bytes_by_key = BTreeMap::new();
    let mut misdecided = Vec::new();
    let mut fingerprint = Fingerprint::default();
    let mut computed = 0;
    for (key, sample, expected) in wanted {
        let bytes = read(&sample.path)?;
        fingerprint.add(&sample, &bytes);
        let expected = match expected {
            Some(e) => e,
            None => {
                computed += 1;
                // Full-size decode, as the validation gate runs golden samples.
                let result =
                    classifier
                        .classify_bytes(&bytes)
                        .map_err(|source| ComposeError::Golden {
                            file: sample.path.display().to_string(),
                            source,
                        })?;
                if let Some(label) = &sample.label {
                    let decided = labels
                        .get(result.decision.class)
                        .cloned()
                        .unwrap_or_default();
                    if *label != decided {
                        misdecided.push((sample.name.clone(), label.clone(), decided));
                    }
                }
                result.scores
            }
        };
        golden.push(GoldenSample {
            file: key.clone(),
            expected,
        });
        bytes_by_key.insert(key, bytes);
    }
    let record = DataRecord {
        source: if inputs.golden.is_empty() {
            inputs
                .validation
                .as_ref()
                .map_or_else(|| "manifest".to_owned(), |p| p.display().to_string())
        } else {
            inputs
                .golden
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        frames: golden.len() as u64,
        sha256: fingerprint.finish(),
    };
    Ok((
        golden,
        bytes_by_key,
        GoldenReport {
            misdecided,
            computed,
            fingerprint: Some(record),
        },
    ))
}

fn provenance(
    inputs: &ComposeInputs,
    onnx_sha256: &str,
    validation: Option<&(ImageSet, ScoredSet)>,
    golden: &Option<DataRecord>,
) -> Provenance {
    let validation_data = validation.map(|(set, scored)| DataRecord {
        source: set.source.display().to_string(),
        frames: scored.frames.iter().filter(|f| f.result.is_ok()).count() as u64,
        sha256: scored.fingerprint.clone(),
    });
    let dataset = match &validation_data {
        Some(v) => format!(
            "not stated; validation frames {} ({} frames)",
            v.source, v.frames
        ),
        None => "not stated".to_owned(),
    };
    Provenance {
        dataset,
        training_script: "not stated".into(),
        source_revision: None,
        notes: None,
        onnx_sha256: Some(onnx_sha256.to_owned()),
        validation_data,
        golden_data: golden.clone(),
        created_by: Some(format!("model-bundle {}", env!("CARGO_PKG_VERSION"))),
        created: Some(inputs.created.clone()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ComposeError> {
    std::fs::read(path).map_err(|source| ComposeError::Io {
        path: path.to_owned(),
        source,
    })
}
