//! Camera frames: bytes in, model input tensor out, through [`ModelInput::prepare`], the entry
//! point the agent's workers call for every frame (`Classifier::classify_bytes`).
//!
//! An input goes through one of two input paths, chosen by its length being even or odd: the
//! shipped model's (gray, area resize, with the agent's reduced-scale JPEG decoding) and a
//! third-party model's (RGB, bilinear, full-size decoding). A frame that decodes must give a
//! tensor of exactly the model's input size, all values finite.
//!
//! The shipped model's path runs at a 30x24 input instead of 320x256: decoding, the untrusted
//! part, then dominates each execution instead of resizing, and the agent's reduced-scale JPEG
//! decoding (used when a frame is at least twice the input size) is reached from small seeds.

use std::cell::RefCell;

use defect_models::Manifest;
use defect_models::model_input::{DecodeMode, ModelInput};

/// The shipped model's manifest.
const SHIPPED_MANIFEST: &str = include_str!("../../../../models/shipped/manifest.toml");
/// An RGB third-party model's manifest.
const FOREIGN_MANIFEST: &str = include_str!("../../../../models/testdata/foreign/manifest.toml");

struct Paths {
    inputs: Vec<(ModelInput, usize)>,
}

/// The shipped model's input shape, and the one the harness runs it at.
const SHIPPED_SHAPE: (&str, &str) = ("shape = [1, 1, 256, 320]", "shape = [1, 1, 24, 30]");

fn input_path(manifest: &str, mode: DecodeMode) -> (ModelInput, usize) {
    let manifest = match Manifest::from_toml(manifest) {
        Ok(manifest) => manifest,
        Err(error) => panic!("a fixture manifest does not parse: {error}"),
    };
    let len = manifest.input.shape.iter().product();
    (ModelInput::with_mode(&manifest, mode), len)
}

/// The shipped manifest at the harness's input size.
fn shipped_small() -> String {
    let (shipped, small) = SHIPPED_SHAPE;
    assert!(
        SHIPPED_MANIFEST.contains(shipped),
        "the shipped manifest's input shape changed: update SHIPPED_SHAPE"
    );
    SHIPPED_MANIFEST.replace(shipped, small)
}

thread_local! {
    static PATHS: RefCell<Paths> = RefCell::new(Paths {
        inputs: vec![
            input_path(&shipped_small(), DecodeMode::Agent),
            input_path(FOREIGN_MANIFEST, DecodeMode::Full),
        ],
    });
}

/// Decodes and preprocesses `data` as a frame for one of the two models.
pub fn run(data: &[u8]) {
    PATHS.with(|paths| {
        let mut paths = paths.borrow_mut();
        let path = data.len() % paths.inputs.len();
        if let Some((input, len)) = paths.inputs.get_mut(path)
            && let Ok(prepared) = input.prepare(data)
        {
            assert_eq!(
                prepared.tensor.len(),
                *len,
                "a decoded frame gave a tensor of the wrong size"
            );
            let values = prepared
                .tensor
                .to_plain_array_view::<f32>()
                .unwrap_or_else(|e| panic!("the input tensor is not f32: {e}"));
            assert!(
                values.iter().all(|v| v.is_finite()),
                "a decoded frame gave a non-finite input value"
            );
        }
    });
}
