//! # defect-models
//!
//! The model bundle shared by the defect-agent daemon and the model updater: what a model is,
//! how it is packaged, checked, loaded and run.
//!
//! ## Layout
//!
//! - [`manifest`]: the manifest's data types and their validation (every problem, by key).
//! - [`bundle`]: the one-file bundle (tar of manifest, ONNX, golden samples), reproducible and
//!   checked against the digests its manifest records.
//! - [`frame`]: decoding untrusted JPEG, PNG and BMP bytes into 8-bit frames.
//! - [`preprocess`]: region of interest, tiles, SIMD resize and normalisation into the tensor.
//! - [`model_input`]: decode plus preprocessing, the one path from bytes to tensor that the
//!   agent, the gate, evaluation and training tensors share.
//! - [`classifier`]: tract inference; a shared [`Model`] and a per-thread [`Classifier`].
//! - [`decision`]: scores to pass or reject with per-class thresholds.
//! - [`gate`]: the validation gate run before a bundle may serve.
//! - [`draft`]: the manifest a person writes, with the measured parts left out.
//! - [`dataset`]: labelled image sets (one folder per label, or a `file,label` CSV).
//! - [`scoring`]: running a model over an image set on the agent's frame path.
//! - [`figures`]: recall, false rejects, per-class figures, confusion matrix, worst misses.
//! - [`calibrate`]: reject thresholds for a wanted recall, and the drift baseline.
//! - [`compose`]: what `model-bundle create` computes: golden scores, thresholds, baseline,
//!   provenance.
//! - [`evaluation`]: a bundle on labelled frames, gates, and the comparison of two bundles.
//! - [`card`]: the model card, in Markdown.
//! - [`npy`]: NumPy `.npy` files.
//! - [`tensors`]: model-input tensors of labelled frames for training, on the agent's path.
//! - [`atomic`]: crash-safe replacement of small files (from `defect-shared`, named here for
//!   the callers that still reach it through this crate).
//! - [`store`]: the on-disk model store: content-addressed bundles and atomic pointers.
//! - [`health`]: the agent's model health report, its verdict on the store's `current` bundle.
//!
//! The format is documented for ops and customers in `models/MANIFEST.md`.

#![forbid(unsafe_code)]

pub use defect_shared::atomic;
pub mod bundle;
pub mod calibrate;
pub mod card;
pub mod classifier;
pub mod compose;
pub mod dataset;
pub mod decision;
pub mod draft;
pub mod evaluation;
pub mod figures;
pub mod frame;
pub mod gate;
pub mod health;
pub mod manifest;
pub mod model_input;
pub mod npy;
pub mod preprocess;
pub mod scoring;
pub mod store;
pub mod tensors;

pub use bundle::{Bundle, BundleError};
pub use classifier::{
    Classification, Classifier, ClassifyError, InferenceError, Model, ModelError, Timings,
};
pub use decision::{Decision, DecisionRule, Verdict};
pub use frame::{DecodeError, DecodeOptions, Frame};
pub use gate::{GateError, GateReport};
pub use manifest::{Manifest, ManifestError};
