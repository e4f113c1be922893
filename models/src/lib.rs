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
//! - [`classifier`]: tract inference; a shared [`Model`] and a per-thread [`Classifier`].
//! - [`decision`]: scores to pass or reject with per-class thresholds.
//! - [`gate`]: the validation gate run before a bundle may serve.
//! - [`atomic`]: crash-safe replacement of small files.
//! - [`store`]: the on-disk model store: content-addressed bundles and atomic pointers.
//! - [`health`]: the agent's model health report, its verdict on the store's `current` bundle.
//!
//! The format is documented for ops and customers in `models/MANIFEST.md`.

#![forbid(unsafe_code)]

pub mod atomic;
pub mod bundle;
pub mod classifier;
pub mod decision;
pub mod frame;
pub mod gate;
pub mod health;
pub mod manifest;
pub mod preprocess;
pub mod store;

pub use bundle::{Bundle, BundleError};
pub use classifier::{Classification, Classifier, ClassifyError, Model, ModelError, Timings};
pub use decision::{Decision, DecisionRule, Verdict};
pub use frame::{DecodeError, DecodeOptions, Frame};
pub use gate::{GateError, GateReport};
pub use manifest::{Manifest, ManifestError};
