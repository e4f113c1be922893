//! Inference with tract: a loaded [`Model`] shared by workers, and one [`Classifier`] per worker.
//!
//! This module owns loading a bundle's ONNX graph into tract with the manifest's fixed input
//! shape and `into_optimized()`, checking that the graph agrees with the manifest (input shape,
//! channel count, number of classes), and running the whole frame path: decode, preprocess,
//! infer, decide, with the time each stage took. A `Model` is immutable and cheap to share; a
//! `Classifier` holds the per-thread state (tract's run state, resizer buffers) and is meant to
//! live on one inference thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::bundle::Bundle;
use crate::decision::{Decision, DecisionRule, softmax};
use crate::frame::{DecodeError, DecodeOptions, Frame};
use crate::manifest::{Manifest, ScoreKind};
use crate::model_input::ModelInput;
use crate::preprocess::{InputStats, PreprocessError};

/// Why a bundle's model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// tract could not parse the ONNX bytes or read the graph's inputs and outputs.
    #[error("model.onnx is not a readable ONNX model")]
    Onnx(#[source] TractError),
    /// The graph has no input or no output at all.
    #[error("model.onnx has no {0}")]
    NoTensor(&'static str),
    /// The manifest names an input or output the graph does not have.
    #[error("model.onnx has no {kind} named {name:?} (it has {available})")]
    NoSuchTensor {
        /// `input` or `output`.
        kind: &'static str,
        /// The name from the manifest.
        name: String,
        /// The names the graph has.
        available: String,
    },
    /// The graph's declared input shape contradicts the manifest.
    #[error(
        "model.onnx input {name:?} is declared as {declared}, but manifest input.shape is {manifest:?}"
    )]
    InputShape {
        /// Input name.
        name: String,
        /// Shape as the ONNX file declares it.
        declared: String,
        /// Shape from the manifest.
        manifest: Vec<usize>,
    },
    /// tract could not type or optimise the graph with the manifest's input shape.
    #[error("model.onnx does not run with input shape {shape:?} from the manifest")]
    Incompatible {
        /// Shape from the manifest.
        shape: Vec<usize>,
        /// tract's explanation (tract reports its errors as `anyhow` chains).
        #[source]
        source: TractError,
    },
    /// The graph's output does not have one score per label.
    #[error(
        "model.onnx output has shape {shape:?}, expected [{batch}, {labels}] (batch, one score per label)"
    )]
    OutputShape {
        /// Output shape after typing.
        shape: Vec<String>,
        /// Expected batch size.
        batch: usize,
        /// Number of labels in the manifest.
        labels: usize,
    },
    /// A thread scoring an image set with the model panicked.
    #[error("a scoring thread panicked")]
    ScoringPanicked,
}

/// Why one frame could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The image bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The frame could not be turned into an input tensor.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// tract failed while running the model.
    #[error("inference failed")]
    Inference(#[source] InferenceError),
}

/// What went wrong while the model ran on one input.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// tract could not run the plan.
    #[error("the model did not run")]
    Run(#[source] TractError),
    /// The plan ran but returned nothing.
    #[error("the model produced no output")]
    NoOutput,
    /// The output tensor does not hold `f32` values.
    #[error("the model's output is not f32")]
    OutputType(#[source] TractError),
}

/// A bundle's model, loaded and optimised, ready to be shared by inference threads.
pub struct Model {
    manifest: Manifest,
    digest: String,
    plan: Arc<TypedRunnableModel>,
    rule: DecisionRule,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("model_version", &self.manifest.model_version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the bundle's ONNX graph into tract with the manifest's fixed input shape.
    pub fn load(bundle: &Bundle) -> Result<Arc<Self>, ModelError> {
        Self::from_onnx(bundle.manifest().clone(), bundle.model(), bundle.digest())
    }

    /// Loads an ONNX graph that is not in a bundle yet, described by `manifest`, as
    /// `model-bundle create` does before it has computed the bundle's golden scores; `digest`
    /// names it in logs and reports.
    pub fn from_onnx(
        manifest: Manifest,
        mut onnx: &[u8],
        digest: &str,
    ) -> Result<Arc<Self>, ModelError> {
        let mut graph = tract_onnx::onnx()
            .model_for_read(&mut onnx)
            .map_err(ModelError::Onnx)?;
        select_input(&mut graph, &manifest)?;
        select_output(&mut graph, &manifest)?;
        let shape = manifest.input.shape.clone();
        let incompatible = |source: TractError| ModelError::Incompatible {
            shape: shape.clone(),
            source,
        };
        let graph = graph
            .with_input_fact(0, f32::fact(shape.clone()).into())
            .map_err(incompatible)?;
        let typed = graph.into_typed().map_err(incompatible)?;
        check_output(&typed, &manifest)?;
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(incompatible)?;
        let rule = DecisionRule::new(&manifest);
        Ok(Arc::new(Model {
            manifest,
            digest: digest.to_owned(),
            plan,
            rule,
        }))
    }

    /// The bundle's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the bundle file the model came from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The optimised plan the classifiers run, for tools that look inside it (the per-operator
    /// profile in `benches/`).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// The decision rule built from the manifest's thresholds.
    pub fn rule(&self) -> &DecisionRule {
        &self.rule
    }

    /// A classifier for one inference thread.
    pub fn classifier(self: &Arc<Self>) -> Result<Classifier, ModelError> {
        let state = self
            .plan
            .spawn()
            .map_err(|source| ModelError::Incompatible {
                shape: self.manifest.input.shape.clone(),
                source,
            })?;
        Ok(Classifier {
            model: Arc::clone(self),
            state,
            input: ModelInput::new(&self.manifest),
        })
    }
}

/// Time spent in each stage of the frame path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Image decoding.
    pub decode: Duration,
    /// Region of interest, resize and normalisation.
    pub preprocess: Duration,
    /// The model run, including the softmax when the output is logits.
    pub inference: Duration,
}

impl Timings {
    /// Sum of the stages.
    pub fn total(&self) -> Duration {
        self.decode + self.preprocess + self.inference
    }
}

/// The result of classifying one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// One probability per label (combined over tiles).
    pub scores: Vec<f32>,
    /// Pass or reject, with class and confidence.
    pub decision: Decision,
    /// Brightness and contrast of the model input, for drift monitoring.
    pub input: InputStats,
    /// Time per stage.
    pub timings: Timings,
}

/// Runs one model on frames; one per inference thread.
pub struct Classifier {
    model: Arc<Model>,
    state: TypedSimpleState,
    input: ModelInput,
}

impl Classifier {
    /// The model this classifier runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Sets the decoding limits; `use_dct_scaling` lets large JPEGs decode at a reduced scale
    /// that still leaves at least twice the model's input resolution.
    pub fn set_decode_options(&mut self, options: DecodeOptions, use_dct_scaling: bool) {
        self.input.set_decode_options(options, use_dct_scaling);
    }

    /// Decodes image bytes and classifies them.
    pub fn classify_bytes(&mut self, bytes: &[u8]) -> Result<Classification, ClassifyError> {
        let prepared = self.input.prepare(bytes)?;
        let mut result = self.run_prepared(prepared.tensor, prepared.stats, prepared.preprocess)?;
        result.timings.decode = prepared.decode;
        Ok(result)
    }

    /// Classifies a decoded frame.
    pub fn classify(&mut self, frame: &Frame) -> Result<Classification, ClassifyError> {
        let prepared = self.input.prepare_frame(frame)?;
        self.run_prepared(prepared.tensor, prepared.stats, prepared.preprocess)
    }

    fn run_prepared(
        &mut self,
        tensor: Tensor,
        input: InputStats,
        preprocess: Duration,
    ) -> Result<Classification, ClassifyError> {
        let start = Instant::now();
        let tiles = self.infer(tensor)?;
        let inference = start.elapsed();
        let scores = if tiles.len() == 1 {
            tiles.into_iter().next().unwrap_or_default()
        } else {
            self.model.rule.combine_tiles(&tiles)
        };
        let decision = self.model.rule.decide(&scores);
        Ok(Classification {
            scores,
            decision,
            input,
            timings: Timings {
                decode: Duration::ZERO,
                preprocess,
                inference,
            },
        })
    }

    /// Runs the model on a prepared input tensor; returns one probability row per tile.
    pub fn infer(&mut self, input: Tensor) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let outputs = self
            .state
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| ClassifyError::Inference(InferenceError::Run(e)))?;
        let output = outputs
            .first()
            .ok_or(ClassifyError::Inference(InferenceError::NoOutput))?;
        let values: Vec<f32> = output
            .to_plain_array_view::<f32>()
            .map_err(|e| ClassifyError::Inference(InferenceError::OutputType(e)))?
            .iter()
            .copied()
            .collect();
        let labels = self.model.manifest.output.labels.len();
        let mut rows: Vec<Vec<f32>> = values.chunks(labels).map(<[f32]>::to_vec).collect();
        if self.model.manifest.output.kind == ScoreKind::Logits {
            rows.iter_mut().for_each(|row| softmax(row));
        }
        Ok(rows)
    }

    /// Prepares the input tensor of a frame without running the model.
    pub fn preprocess(&mut self, frame: &Frame) -> Result<(Tensor, InputStats), ClassifyError> {
        let prepared = self.input.prepare_frame(frame)?;
        Ok((prepared.tensor, prepared.stats))
    }

    /// Decodes image bytes and prepares the input tensor exactly as [`Classifier::classify_bytes`]
    /// would, without running the model.
    pub fn prepare_bytes(&mut self, bytes: &[u8]) -> Result<(Tensor, InputStats), ClassifyError> {
        let prepared = self.input.prepare(bytes)?;
        Ok((prepared.tensor, prepared.stats))
    }
}

fn names(graph: &InferenceModel, outlets: &[OutletId]) -> String {
    outlets
        .iter()
        .map(|o| {
            graph
                .outlet_label(*o)
                .unwrap_or(&graph.node(o.node).name)
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn select_input(graph: &mut InferenceModel, manifest: &Manifest) -> Result<(), ModelError> {
    let inputs = graph.input_outlets().map_err(ModelError::Onnx)?.to_vec();
    let chosen = match &manifest.input.tensor {
        Some(name) => inputs
            .iter()
            .copied()
            .find(|o| graph.node(o.node).name == *name)
            .ok_or_else(|| ModelError::NoSuchTensor {
                kind: "input",
                name: name.clone(),
                available: names(graph, &inputs),
            })?,
        None => *inputs.first().ok_or(ModelError::NoTensor("input"))?,
    };
    let declared = graph
        .outlet_fact(chosen)
        .map_err(ModelError::Onnx)?
        .shape
        .clone();
    let dims: Vec<Option<usize>> = declared
        .dims()
        .map(|d| {
            d.concretize()
                .and_then(|d| d.as_i64())
                .and_then(|d| usize::try_from(d).ok())
        })
        .collect();
    let rank_known = !declared.is_open();
    let shape = &manifest.input.shape;
    let contradicts = (rank_known && dims.len() != shape.len())
        || dims
            .iter()
            .zip(shape)
            .any(|(d, s)| d.is_some_and(|d| d != *s));
    if contradicts {
        let declared = dims
            .iter()
            .map(|d| d.map_or("?".to_owned(), |d| d.to_string()))
            .collect::<Vec<_>>()
            .join("x");
        return Err(ModelError::InputShape {
            name: graph.node(chosen.node).name.clone(),
            declared,
            manifest: shape.clone(),
        });
    }
    graph.set_input_outlets(&[chosen]).map_err(ModelError::Onnx)
}

fn select_output(graph: &mut InferenceModel, manifest: &Manifest) -> Result<(), ModelError> {
    let outputs = graph.output_outlets().map_err(ModelError::Onnx)?.to_vec();
    let chosen = match &manifest.output.tensor {
        Some(name) => outputs
            .iter()
            .copied()
            .find(|o| {
                graph.outlet_label(*o) == Some(name.as_str()) || graph.node(o.node).name == *name
            })
            .ok_or_else(|| ModelError::NoSuchTensor {
                kind: "output",
                name: name.clone(),
                available: names(graph, &outputs),
            })?,
        None => *outputs.first().ok_or(ModelError::NoTensor("output"))?,
    };
    graph
        .select_output_outlets(&[chosen])
        .map_err(ModelError::Onnx)
}

fn check_output(typed: &TypedModel, manifest: &Manifest) -> Result<(), ModelError> {
    let batch = manifest.input.batch();
    let labels = manifest.output.labels.len();
    let shape: Vec<String> = typed
        .output_fact(0)
        .map(|f| f.shape.iter().map(|d| d.to_string()).collect())
        .unwrap_or_default();
    let total: Option<usize> = typed
        .output_fact(0)
        .ok()
        .and_then(|f| f.shape.as_concrete().map(|s| s.iter().product()));
    if total != Some(batch * labels) {
        return Err(ModelError::OutputShape {
            shape,
            batch,
            labels,
        });
    }
    Ok(())
}
