//! The bundle manifest: what a model expects as input, what its outputs mean, how to check it
//! and where it came from.
//!
//! This module owns the manifest's data types and their validation. It does not read files or
//! archives (see [`crate::bundle`]); it turns TOML or JSON text into a [`Manifest`] and reports
//! every problem at once, each naming the key it concerns. The field reference lives in
//! `models/MANIFEST.md`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The bundle format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Everything needed to use a classifier correctly on the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version; see [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Model name, lowercase letters, digits and dashes.
    pub name: String,
    /// Human-readable version string shown to operators.
    pub version: String,
    /// Integer version that only ever increases between published versions of a model.
    pub model_version: u64,
    /// Oldest defect-agent version that can serve this bundle (`MAJOR.MINOR.PATCH`).
    pub min_agent_version: String,
    /// One-line description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What the model takes.
    pub input: InputSpec,
    /// How a camera frame becomes the input tensor.
    pub preprocess: Preprocess,
    /// What the model's scores mean.
    pub output: OutputSpec,
    /// Golden samples and latency budget checked before the bundle is served.
    pub validation: Validation,
    /// Statistics of the validation data, for drift monitoring.
    pub baseline: Baseline,
    /// What data and which script produced the model.
    pub provenance: Provenance,
    /// The operating point measured on the validation frames when the thresholds were chosen;
    /// written by `model-bundle create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// Digests of the bundle's other parts; written by `model-bundle create`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileDigests>,
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// ONNX input name; the graph's first input when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// Fixed shape of four dimensions in `layout` order.
    pub shape: Vec<usize>,
    /// Order of the four dimensions.
    pub layout: Layout,
    /// Colour the frame is converted to.
    pub color: ColorSpace,
    /// Element type; only `f32` for now.
    pub dtype: DType,
}

/// Dimension order of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channels, height, width.
    Nchw,
    /// Batch, height, width, channels.
    Nhwc,
}

/// Colour space of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorSpace {
    /// One channel, 8-bit luminance.
    Gray,
    /// Three channels, red, green, blue.
    Rgb,
}

impl ColorSpace {
    /// Number of channels of this colour space.
    pub const fn channels(self) -> usize {
        match self {
            ColorSpace::Gray => 1,
            ColorSpace::Rgb => 3,
        }
    }
}

/// Element type of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
}

impl InputSpec {
    /// Batch size (the number of tiles).
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Input height in pixels.
    pub fn height(&self) -> usize {
        match self.layout {
            Layout::Nchw => self.shape.get(2).copied().unwrap_or(0),
            Layout::Nhwc => self.shape.get(1).copied().unwrap_or(0),
        }
    }

    /// Input width in pixels.
    pub fn width(&self) -> usize {
        match self.layout {
            Layout::Nchw => self.shape.get(3).copied().unwrap_or(0),
            Layout::Nhwc => self.shape.get(2).copied().unwrap_or(0),
        }
    }

    /// Channel count as the shape states it.
    pub fn channels(&self) -> usize {
        match self.layout {
            Layout::Nchw => self.shape.get(1).copied().unwrap_or(0),
            Layout::Nhwc => self.shape.get(3).copied().unwrap_or(0),
        }
    }
}

/// How a frame becomes the input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resampling filter used to reach the input size.
    pub resize: ResizeFilter,
    /// Factor applied to each 8-bit value before normalisation (usually 1/255).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
    /// Region of the frame to inspect; the whole frame when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi: Option<Roi>,
    /// Grid the region is cut into, one batch item per tile; one tile when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<Tiles>,
    /// How JPEG frames are decoded for this model; `full` when absent.
    #[serde(default, skip_serializing_if = "JpegDecode::is_full")]
    pub jpeg_decode: JpegDecode,
}

/// How JPEG frames are decoded before the resize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JpegDecode {
    /// The model was trained on full-size decodes. The agent may still decode a large JPEG at
    /// a reduced DCT scale where that leaves at least twice the input resolution and the
    /// resize is not `area` (whose input is the exact block mean of the full-size pixels).
    #[default]
    Full,
    /// The model was trained on JPEGs decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that
    /// still covers its input, as `model-bundle tensors` decodes them for such a manifest.
    /// Every consumer decodes this way, so a 1280x1024 JPEG for a 320x256 input is decoded
    /// straight to 320x256 and skips three quarters of the inverse DCT and all of the resize.
    Scaled,
}

impl JpegDecode {
    /// Whether this is the default, full-size decoding.
    pub fn is_full(&self) -> bool {
        *self == JpegDecode::Full
    }
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Box filter: the mean of the covered pixels (exact block mean for integer factors).
    Area,
    /// Antialiased bilinear (as Pillow's `BILINEAR`).
    Bilinear,
    /// Lanczos with three lobes.
    Lanczos3,
    /// Nearest neighbour.
    Nearest,
}

/// A rectangle of the frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A grid of tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiles {
    /// Number of tile rows.
    pub rows: u32,
    /// Number of tile columns.
    pub cols: u32,
}

impl Preprocess {
    /// Number of tiles, one when no grid is set.
    pub fn tile_count(&self) -> usize {
        self.tiles.map_or(1, |t| t.rows as usize * t.cols as usize)
    }
}

/// What the model's output means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// ONNX output name; the graph's first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// Whether the output is already probabilities or raw logits.
    pub kind: ScoreKind,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Labels that mean the part must be rejected.
    pub defects: Vec<String>,
    /// Per defect label, the score at or above which the part is rejected.
    pub reject_threshold: BTreeMap<String, f32>,
}

/// Meaning of the raw output values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    /// Values already sum to one.
    Probabilities,
    /// Raw values; the agent applies a softmax.
    Logits,
}

/// Checks run before a bundle is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// Largest allowed absolute difference between a golden sample's scores and the expected ones.
    pub tolerance: f32,
    /// Median single-core inference time the model must stay below, in milliseconds.
    pub latency_budget_ms: f64,
    /// Golden samples with their expected scores.
    pub golden: Vec<GoldenSample>,
}

/// One golden sample: an image and the scores the model must give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenSample {
    /// Path of the image: relative to the manifest when creating, `golden/NAME` inside a bundle.
    pub file: String,
    /// Expected score per label, in label order.
    pub expected: Vec<f32>,
}

/// Statistics of the validation data, the reference for drift monitoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Number of frames the statistics come from.
    pub frames: u64,
    /// Histogram of the mean pixel value of each model input image (0-255 scale).
    pub brightness: Histogram,
    /// Histogram of the pixel standard deviation of each model input image.
    pub contrast: Histogram,
    /// Histogram of the highest defect-class score of each frame.
    pub defect_score: Histogram,
    /// Fraction of validation frames rejected.
    pub reject_rate: f64,
}

/// A histogram with equal-width bins between `min` and `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub min: f64,
    /// Upper edge of the last bin.
    pub max: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
}

/// Where the model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The training and validation data.
    #[serde(default)]
    pub dataset: String,
    /// The script that trained and exported the model.
    #[serde(default)]
    pub training_script: String,
    /// Source revision of the training code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// Free-form notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// SHA-256 of the ONNX file, as `model-bundle create` read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_sha256: Option<String>,
    /// The frames the thresholds and the drift baseline were computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_data: Option<DataRecord>,
    /// The images the golden samples were taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_data: Option<DataRecord>,
    /// The tool and version that computed the bundle's numbers, such as `model-bundle 0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When the bundle was created (UTC, RFC 3339; `SOURCE_DATE_EPOCH` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// A data set a bundle's numbers were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRecord {
    /// The folder or CSV file, as given to the tool.
    pub source: String,
    /// Number of images used.
    pub frames: u64,
    /// Fingerprint over the images' names, labels and contents (see `models/MANIFEST.md`).
    pub sha256: String,
}

/// Pass/reject figures at the chosen thresholds on the validation frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatingPoint {
    /// Labelled validation frames measured.
    pub frames: u64,
    /// The wanted recall the thresholds were chosen for, when one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_recall: Option<crate::calibrate::RecallTarget>,
    /// Share of defect frames rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect_recall: Option<f64>,
    /// Share of good frames rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_reject_rate: Option<f64>,
    /// Share of frames with the right pass/reject verdict.
    pub pass_reject_accuracy: f64,
    /// Counts by true class (rows) and decided class (columns), in label order.
    pub confusion: Vec<Vec<u64>>,
}

/// SHA-256 digests (lowercase hex) of the bundle's parts other than the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigests {
    /// Digest of `model.onnx`.
    pub model: String,
    /// Digest of each golden file, by its path inside the bundle.
    pub golden: BTreeMap<String, String>,
}

/// One problem found in a manifest, naming the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, such as `output.reject_threshold.scratch`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a manifest could not be used.
///
/// Each variant's message carries its cause's text; none exposes it again as a `source`, so an
/// error chain prints every sentence once.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The TOML text does not parse into a manifest.
    #[error("not a valid manifest: {}", .0.message().trim())]
    Toml(toml::de::Error),
    /// The JSON text does not parse into a manifest.
    #[error("not a valid manifest: {0}")]
    Json(serde_json::Error),
    /// The manifest parses but its values are inconsistent.
    #[error("manifest has {} problem(s): {}", .0.len(), join_problems(.0))]
    Invalid(Vec<Problem>),
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Manifest {
    /// Parses a hand-written TOML manifest and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(ManifestError::Toml)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Parses the canonical JSON manifest stored in a bundle and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The canonical JSON form stored in a bundle: fixed key order, pretty-printed, newline at
    /// the end.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // Serialising plain data structs to a Vec cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Index of a label in output order.
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.output.labels.iter().position(|l| l == label)
    }

    /// Checks every value and returns all problems found.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut p = Problems::default();
        self.check_identity(&mut p);
        self.check_input(&mut p);
        self.check_preprocess(&mut p);
        self.check_output(&mut p);
        self.check_validation(&mut p);
        self.check_baseline(&mut p);
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid(p.0))
        }
    }

    fn check_identity(&self, p: &mut Problems) {
        if self.format_version != FORMAT_VERSION {
            p.add(
                "format_version",
                format!(
                    "is {}, this build reads {FORMAT_VERSION}",
                    self.format_version
                ),
            );
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            p.add(
                "name",
                format!(
                    "{:?} must be 1-64 characters of a-z, 0-9 and '-'",
                    self.name
                ),
            );
        }
        if self.version.trim().is_empty() {
            p.add("version", "must not be empty".into());
        }
        if self.model_version == 0 {
            p.add("model_version", "must be at least 1".into());
        }
        if parse_semver(&self.min_agent_version).is_none() {
            p.add(
                "min_agent_version",
                format!("{:?} is not MAJOR.MINOR.PATCH", self.min_agent_version),
            );
        }
    }

    fn check_input(&self, p: &mut Problems) {
        let input = &self.input;
        if input.shape.len() != 4 {
            p.add(
                "input.shape",
                format!(
                    "has {} dimensions, image models take 4 ({:?})",
                    input.shape.len(),
                    input.layout
                ),
            );
            return;
        }
        if input.shape.contains(&0) {
            p.add("input.shape", "dimensions must be at least 1".into());
        }
        if input.channels() != input.color.channels() {
            p.add(
                "input.shape",
                format!(
                    "has {} channel(s) but input.color {:?} needs {}",
                    input.channels(),
                    input.color,
                    input.color.channels()
                ),
            );
        }
        let (h, w) = (input.height(), input.width());
        if h > 8192 || w > 8192 {
            p.add("input.shape", format!("{w}x{h} is larger than 8192x8192"));
        }
        if input.batch() != self.preprocess.tile_count() {
            p.add(
                "input.shape",
                format!(
                    "batch is {} but preprocess.tiles gives {} tile(s)",
                    input.batch(),
                    self.preprocess.tile_count()
                ),
            );
        }
    }

    fn check_preprocess(&self, p: &mut Problems) {
        let pre = &self.preprocess;
        let channels = self.input.color.channels();
        if !(pre.scale.is_finite() && pre.scale > 0.0) {
            p.add(
                "preprocess.scale",
                format!("{} must be positive", pre.scale),
            );
        }
        if pre.mean.len() != channels || pre.mean.iter().any(|m| !m.is_finite()) {
            p.add(
                "preprocess.mean",
                format!("needs {channels} finite value(s), one per channel"),
            );
        }
        if pre.std.len() != channels || pre.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            p.add(
                "preprocess.std",
                format!("needs {channels} positive value(s), one per channel"),
            );
        }
        if let Some(roi) = pre.roi
            && (roi.width == 0 || roi.height == 0)
        {
            p.add(
                "preprocess.roi",
                "width and height must be at least 1".into(),
            );
        }
        if let Some(tiles) = pre.tiles
            && (tiles.rows == 0 || tiles.cols == 0 || tiles.rows > 16 || tiles.cols > 16)
        {
            p.add("preprocess.tiles", "rows and cols must be 1 to 16".into());
        }
        if pre.jpeg_decode == JpegDecode::Scaled && pre.roi.is_some() {
            p.add(
                "preprocess.jpeg_decode",
                "\"scaled\" cannot be combined with a region of interest (crop in the camera, \
                 or use \"full\")"
                    .into(),
            );
        }
    }

    fn check_output(&self, p: &mut Problems) {
        let out = &self.output;
        if out.labels.len() < 2 {
            p.add("output.labels", "needs at least two labels".into());
        }
        for (i, label) in out.labels.iter().enumerate() {
            if label.is_empty() {
                p.add("output.labels", format!("label {i} is empty"));
            } else if out.labels[..i].contains(label) {
                p.add("output.labels", format!("{label:?} appears twice"));
            }
        }
        if out.defects.is_empty() {
            p.add("output.defects", "names no defect label".into());
        }
        if !out.labels.is_empty() && out.defects.len() >= out.labels.len() {
            p.add(
                "output.defects",
                "every label is a defect; one label must mean a good part".into(),
            );
        }
        for defect in &out.defects {
            if !out.labels.contains(defect) {
                p.add(
                    "output.defects",
                    format!("{defect:?} is not one of output.labels"),
                );
            }
            match out.reject_threshold.get(defect) {
                None => p.add(
                    &format!("output.reject_threshold.{defect}"),
                    "is missing; every defect label needs one".into(),
                ),
                Some(t) if !(t.is_finite() && *t > 0.0 && *t <= 1.0) => p.add(
                    &format!("output.reject_threshold.{defect}"),
                    format!("{t} must be in (0, 1]"),
                ),
                Some(_) => {}
            }
        }
        for label in out.reject_threshold.keys() {
            if !out.defects.contains(label) {
                p.add(
                    &format!("output.reject_threshold.{label}"),
                    "is set but the label is not one of output.defects".into(),
                );
            }
        }
    }

    fn check_validation(&self, p: &mut Problems) {
        let v = &self.validation;
        if !(v.tolerance.is_finite() && v.tolerance >= 0.0 && v.tolerance < 1.0) {
            p.add(
                "validation.tolerance",
                format!("{} must be in [0, 1)", v.tolerance),
            );
        }
        if !(v.latency_budget_ms.is_finite() && v.latency_budget_ms > 0.0) {
            p.add(
                "validation.latency_budget_ms",
                format!("{} must be positive", v.latency_budget_ms),
            );
        }
        if v.golden.is_empty() {
            p.add(
                "validation.golden",
                "needs at least one golden sample".into(),
            );
        }
        for (i, g) in v.golden.iter().enumerate() {
            if g.expected.len() != self.output.labels.len() {
                p.add(
                    &format!("validation.golden[{i}].expected"),
                    format!(
                        "has {} score(s), output.labels has {}",
                        g.expected.len(),
                        self.output.labels.len()
                    ),
                );
            }
            if g.file.trim().is_empty() {
                p.add(&format!("validation.golden[{i}].file"), "is empty".into());
            }
        }
    }

    fn check_baseline(&self, p: &mut Problems) {
        let b = &self.baseline;
        for (key, h) in [
            ("baseline.brightness", &b.brightness),
            ("baseline.contrast", &b.contrast),
            ("baseline.defect_score", &b.defect_score),
        ] {
            if h.counts.is_empty() || !(h.min.is_finite() && h.max.is_finite() && h.max > h.min) {
                p.add(key, "needs at least one bin and min < max".into());
            }
        }
        if !(0.0..=1.0).contains(&b.reject_rate) {
            p.add(
                "baseline.reject_rate",
                format!("{} must be in [0, 1]", b.reject_rate),
            );
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: String) {
        self.0.push(Problem {
            key: key.to_owned(),
            message,
        });
    }
}

/// Parses `MAJOR.MINOR.PATCH` (a pre-release or build suffix after `-` or `+` is ignored).
pub fn parse_semver(text: &str) -> Option<(u64, u64, u64)> {
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// A small valid manifest for unit tests.
#[cfg(test)]
pub(crate) const EXAMPLE: &str = r#"
format_version = 1
name = "surface-classifier"
version = "1.0.0"
model_version = 3
min_agent_version = "0.1.0"

[input]
shape = [1, 1, 256, 320]
layout = "nchw"
color = "gray"
dtype = "f32"

[preprocess]
resize = "area"
scale = 0.00392156862745098
mean = [0.5]
std = [0.25]

[output]
kind = "probabilities"
labels = ["good", "scratch"]
defects = ["scratch"]
reject_threshold = { scratch = 0.5 }

[validation]
tolerance = 0.01
latency_budget_ms = 25.0
golden = [{ file = "golden/a.png", expected = [0.9, 0.1] }]

[baseline]
frames = 10
brightness = { min = 0.0, max = 256.0, counts = [1, 2] }
contrast = { min = 0.0, max = 128.0, counts = [1, 2] }
defect_score = { min = 0.0, max = 1.0, counts = [3] }
reject_rate = 0.5

[provenance]
dataset = "test"
training_script = "none"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_jpeg_decode_is_read_kept_and_left_out_when_full() {
        let full = Manifest::from_toml(EXAMPLE).expect("example is valid");
        assert_eq!(full.preprocess.jpeg_decode, JpegDecode::Full);
        assert!(
            !String::from_utf8_lossy(&full.to_canonical_json()).contains("jpeg_decode"),
            "the default must not change existing manifests' canonical JSON (their digests)"
        );
        let scaled = Manifest::from_toml(&EXAMPLE.replace(
            "resize = \"area\"",
            "resize = \"area\"\njpeg_decode = \"scaled\"",
        ))
        .expect("scaled is valid");
        assert_eq!(scaled.preprocess.jpeg_decode, JpegDecode::Scaled);
        let json = scaled.to_canonical_json();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains(r#""jpeg_decode": "scaled""#), "{text}");
        assert_eq!(Manifest::from_json(&json).expect("json"), scaled);
    }

    #[test]
    fn scaled_jpeg_decode_with_a_region_of_interest_is_refused_by_name() {
        let mut m = Manifest::from_toml(EXAMPLE).expect("example is valid");
        m.preprocess.jpeg_decode = JpegDecode::Scaled;
        m.preprocess.roi = Some(Roi {
            x: 0,
            y: 0,
            width: 640,
            height: 512,
        });
        let err = m
            .validate()
            .expect_err("scaled decode with a region accepted");
        assert!(err.to_string().contains("preprocess.jpeg_decode"), "{err}");
    }

    #[test]
    fn example_parses_and_round_trips_through_json() {
        let m = Manifest::from_toml(EXAMPLE).expect("example is valid");
        assert_eq!(m.input.height(), 256);
        assert_eq!(m.input.width(), 320);
        let json = m.to_canonical_json();
        assert_eq!(Manifest::from_json(&json).expect("json is valid"), m);
        assert_eq!(
            json,
            Manifest::from_json(&json)
                .expect("again")
                .to_canonical_json()
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let broken = EXAMPLE
            .replace(
                "name = \"surface-classifier\"",
                "name = \"Surface Classifier\"",
            )
            .replace("shape = [1, 1, 256, 320]", "shape = [1, 3, 256, 320]")
            .replace(
                "reject_threshold = { scratch = 0.5 }",
                "reject_threshold = { scratch = 1.5 }",
            )
            .replace("expected = [0.9, 0.1]", "expected = [1.0]");
        let Err(ManifestError::Invalid(problems)) = Manifest::from_toml(&broken) else {
            panic!("broken manifest accepted");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "name",
                "input.shape",
                "output.reject_threshold.scratch",
                "validation.golden[0].expected"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let typo = EXAMPLE.replace("tolerance = 0.01", "tolerence = 0.01");
        let err = Manifest::from_toml(&typo).expect_err("typo accepted");
        assert!(err.to_string().contains("tolerence"), "{err}");
    }

    #[test]
    fn semver_parses_core_and_ignores_suffix() {
        assert_eq!(parse_semver("1.2.3"), Some((1, 2, 3)));
        assert_eq!(parse_semver("0.1.0-rc1"), Some((0, 1, 0)));
        assert_eq!(parse_semver("1.2"), None);
    }
}
