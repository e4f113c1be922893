//! The shadow run: the candidate model decides the same frame after the live outcome left.
//!
//! This module owns the frame hook that runs the store's candidate on every frame the model in
//! service decided, unless frames wait that no idle worker would take (then the run is
//! skipped and counted), and records the comparison into the [`Canary`] evidence. When the
//! two models disagree it leaves the candidate's result on the frame for the hooks after it
//! (data capture keeps such frames).

use defect_shared::error_chain::Chain;
use std::sync::Arc;

use defect_models::{Classifier, DecodeOptions, Model};

use super::{Canary, Side};
use crate::pipeline::{DecidedFrame, FrameHook};
use crate::serving::ModelSlot;

/// One worker's shadow runner.
pub struct ShadowRun {
    canary: Arc<Canary>,
    slot: Arc<ModelSlot>,
    dct_scaling: bool,
    /// The classifier of the candidate this worker last ran.
    classifier: Option<Classifier>,
}

impl ShadowRun {
    /// A shadow runner taking the candidate from `slot` and recording into `canary`; JPEGs are
    /// decoded at a reduced DCT scale when `dct_scaling` is set, as for the live model.
    pub fn new(canary: Arc<Canary>, slot: Arc<ModelSlot>, dct_scaling: bool) -> ShadowRun {
        ShadowRun {
            canary,
            slot,
            dct_scaling,
            classifier: None,
        }
    }

    /// The candidate's classifier, rebuilt when the candidate changed.
    fn classifier_for(&mut self, candidate: &Arc<Model>) -> Option<&mut Classifier> {
        let stale = self
            .classifier
            .as_ref()
            .is_none_or(|c| c.model().digest() != candidate.digest());
        if stale {
            match candidate.classifier() {
                Ok(mut classifier) => {
                    classifier.set_decode_options(DecodeOptions::default(), self.dct_scaling);
                    self.classifier = Some(classifier);
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "cannot start the candidate's classifier");
                    self.canary.candidate_failed();
                    return None;
                }
            }
        }
        self.classifier.as_mut()
    }
}

impl FrameHook for ShadowRun {
    fn after_decision(&mut self, frame: &mut DecidedFrame<'_>) {
        let Some(candidate) = self.slot.candidate() else {
            return;
        };
        if candidate.digest() == frame.model.digest() {
            return;
        }
        if frame.frames_waiting {
            self.canary.skipped();
            return;
        }
        let canary = Arc::clone(&self.canary);
        let Some(classifier) = self.classifier_for(&candidate) else {
            return;
        };
        let result = match classifier.classify_bytes(&frame.bytes) {
            Ok(result) => result,
            Err(error) => {
                tracing::debug!(error = %Chain(&error), "the candidate failed on a frame");
                canary.candidate_failed();
                return;
            }
        };
        let model = frame.model;
        let disagree = canary.compare(
            Side {
                result: frame.result,
                labels: &model.manifest().output.labels,
            },
            model.manifest().model_version,
            Side {
                result: &result,
                labels: &candidate.manifest().output.labels,
            },
        );
        if disagree {
            frame.disagreement = Some((candidate, result));
        }
    }
}
