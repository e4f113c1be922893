//! The default model bundle compiled into the binary.
//!
//! This module owns the shipped classifier that `defect-agent` serves when it is given no
//! other bundle, so a fresh box and the demo work without any download. The bundle is the one
//! built by `models/training/` and committed as `models/shipped/surface-classifier.dmb`.

use defect_models::{Bundle, BundleError};

/// Bytes of the shipped bundle.
pub const SHIPPED_BUNDLE: &[u8] = include_bytes!("../../models/shipped/surface-classifier.dmb");

/// The shipped bundle, parsed and checked against its digests.
pub fn shipped_bundle() -> Result<Bundle, BundleError> {
    Bundle::from_bytes(SHIPPED_BUNDLE.to_vec())
}
