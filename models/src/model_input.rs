//! From image bytes to the model's input tensor: the one path every consumer shares.
//!
//! This module owns the decode options and the preprocessing of one model, put together, so
//! that the agent's workers, the validation gate, `model-bundle evaluate` and the training
//! tensors (`model-bundle tensors`) all turn a frame into exactly the same input tensor. It
//! does not run the model ([`crate::classifier`] does).

use std::time::{Duration, Instant};

use tract_onnx::prelude::Tensor;

use crate::classifier::ClassifyError;
use crate::frame::{self, DecodeOptions, Frame};
use crate::manifest::Manifest;
use crate::preprocess::{InputStats, Preprocessor};

/// How image bytes are decoded before preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeMode {
    /// Every image at full size, as the validation gate decodes golden samples; JPEGs at the
    /// reduced DCT scale only when the manifest requires it (`jpeg_decode = "scaled"`).
    #[default]
    Full,
    /// As the agent decodes frames: large JPEGs at a reduced DCT scale where that leaves the
    /// model input unchanged in kind (see [`Preprocessor::min_decode_size`]).
    Agent,
}

/// A model input tensor with what it took to make it.
#[derive(Debug)]
pub struct PreparedInput {
    /// The tensor in the manifest's shape and layout.
    pub tensor: Tensor,
    /// Brightness and contrast of the model input image.
    pub stats: InputStats,
    /// Time spent decoding.
    pub decode: Duration,
    /// Time spent on region, resize and normalisation.
    pub preprocess: Duration,
}

/// Decoding plus preprocessing for one model; one per thread (it keeps resize buffers).
pub struct ModelInput {
    preprocessor: Preprocessor,
    decode: DecodeOptions,
}

impl ModelInput {
    /// The input path a manifest prescribes, decoding at full size.
    pub fn new(manifest: &Manifest) -> Self {
        let preprocessor = Preprocessor::new(manifest);
        let decode = DecodeOptions {
            jpeg_min_size: preprocessor.required_decode_size(),
            ..DecodeOptions::default()
        };
        ModelInput {
            preprocessor,
            decode,
        }
    }

    /// The input path a manifest prescribes, with the given decode mode and default limits.
    pub fn with_mode(manifest: &Manifest, mode: DecodeMode) -> Self {
        let mut input = ModelInput::new(manifest);
        input.set_decode_options(DecodeOptions::default(), mode == DecodeMode::Agent);
        input
    }

    /// Sets the decoding limits; `use_dct_scaling` lets large JPEGs decode at a reduced scale
    /// that still leaves at least twice the model's input resolution. A model trained on
    /// DCT-scaled decodes (`jpeg_decode = "scaled"`) is always fed them, whatever
    /// `use_dct_scaling` says: anything else would not be the input it was trained on.
    pub fn set_decode_options(&mut self, mut options: DecodeOptions, use_dct_scaling: bool) {
        options.jpeg_min_size = if use_dct_scaling {
            self.preprocessor.min_decode_size()
        } else {
            self.preprocessor.required_decode_size()
        };
        self.decode = options;
    }

    /// Decodes image bytes and builds the input tensor.
    pub fn prepare(&mut self, bytes: &[u8]) -> Result<PreparedInput, ClassifyError> {
        let start = Instant::now();
        let frame = frame::decode(bytes, &self.decode)?;
        let decode = start.elapsed();
        let mut prepared = self.prepare_frame(&frame)?;
        prepared.decode = decode;
        Ok(prepared)
    }

    /// Builds the input tensor of a decoded frame.
    pub fn prepare_frame(&mut self, frame: &Frame) -> Result<PreparedInput, ClassifyError> {
        let start = Instant::now();
        let (tensor, stats) = self.preprocessor.run(frame)?;
        Ok(PreparedInput {
            tensor,
            stats,
            decode: Duration::ZERO,
            preprocess: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::{GrayImage, ImageFormat, Luma};

    use super::*;
    use crate::manifest::{EXAMPLE, JpegDecode, ResizeFilter};
    use crate::preprocess::tests::values;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = GrayImage::from_fn(width, height, |x, y| Luma([((x * 7 + y * 3) % 251) as u8]));
        let mut bytes = Cursor::new(Vec::new());
        img.write_to(&mut bytes, ImageFormat::Jpeg).expect("encode");
        bytes.into_inner()
    }

    fn area_manifest(decode: JpegDecode) -> Manifest {
        let mut m = Manifest::from_toml(EXAMPLE).expect("example");
        m.preprocess.resize = ResizeFilter::Area;
        m.preprocess.jpeg_decode = decode;
        m
    }

    /// The input tensor of `bytes` through `input`, as its values.
    fn tensor(input: &mut ModelInput, bytes: &[u8]) -> Vec<f32> {
        values(&input.prepare(bytes).expect("prepare").tensor)
    }

    #[test]
    fn a_scaled_decode_model_gets_the_dct_scaled_frame_in_every_mode() {
        let manifest = area_manifest(JpegDecode::Scaled);
        let frame = jpeg(1280, 1024);
        let agent = tensor(
            &mut ModelInput::with_mode(&manifest, DecodeMode::Agent),
            &frame,
        );
        let full = tensor(
            &mut ModelInput::with_mode(&manifest, DecodeMode::Full),
            &frame,
        );
        let mut off = ModelInput::new(&manifest);
        off.set_decode_options(DecodeOptions::default(), false);
        let agent_without_dct = tensor(&mut off, &frame);
        assert_eq!(
            agent, full,
            "the validation gate must see what the agent sees"
        );
        assert_eq!(
            agent, agent_without_dct,
            "dct_scaling = false must not change its input"
        );
        // The area model trained on full-size decodes gets a different input: the block mean.
        let exact = tensor(
            &mut ModelInput::with_mode(&area_manifest(JpegDecode::Full), DecodeMode::Agent),
            &frame,
        );
        assert_eq!(exact.len(), agent.len());
        assert_ne!(exact, agent);
    }

    #[test]
    fn a_scaled_decode_model_decodes_a_large_jpeg_straight_to_its_input_size() {
        let manifest = area_manifest(JpegDecode::Scaled);
        let input = ModelInput::new(&manifest);
        assert_eq!(input.decode.jpeg_min_size, Some((320, 256)));
        let decoded = frame::decode(&jpeg(1280, 1024), &input.decode).expect("decode");
        assert_eq!((decoded.width(), decoded.height()), (320, 256));
        let full_size = area_manifest(JpegDecode::Full);
        assert_eq!(ModelInput::new(&full_size).decode.jpeg_min_size, None);
    }
}
