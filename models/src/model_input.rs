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
    /// Every image at full size, as the validation gate decodes golden samples.
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
        ModelInput {
            preprocessor: Preprocessor::new(manifest),
            decode: DecodeOptions::default(),
        }
    }

    /// The input path a manifest prescribes, with the given decode mode and default limits.
    pub fn with_mode(manifest: &Manifest, mode: DecodeMode) -> Self {
        let mut input = ModelInput::new(manifest);
        input.set_decode_options(DecodeOptions::default(), mode == DecodeMode::Agent);
        input
    }

    /// Sets the decoding limits; `use_dct_scaling` lets large JPEGs decode at a reduced scale
    /// that still leaves at least twice the model's input resolution.
    pub fn set_decode_options(&mut self, mut options: DecodeOptions, use_dct_scaling: bool) {
        options.jpeg_min_size = if use_dct_scaling {
            self.preprocessor.min_decode_size()
        } else {
            None
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
