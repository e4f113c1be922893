//! Model bundles (`.dmb`): the archive, the manifest inside it and the digests of its parts,
//! as the updater and the agent read a bundle before anything loads its ONNX model.
//!
//! A bundle that opens must have a valid manifest and report the SHA-256 of its own bytes.

use defect_models::Bundle;
use defect_models::bundle::sha256_hex;

/// Opens `data` as a bundle.
pub fn run(data: &[u8]) {
    let Ok(bundle) = Bundle::from_bytes(data.to_vec()) else {
        return;
    };
    assert_eq!(bundle.digest(), sha256_hex(data), "bundle digest");
    let _ = bundle.manifest().validate();
}
