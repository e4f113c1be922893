//! The inference worker threads.
//!
//! This module owns the dedicated threads that decode, preprocess and run the model, one frame
//! at a time each, off tokio's threads (tract runs one inference on one thread). A worker takes
//! the model in service for every frame, so a new model takes over at a frame boundary; it
//! skips frames whose deadline already answered for them, and turns every failure into a
//! "no decision" with its reason. After a frame's live outcome is on its way, a worker runs
//! the canary candidate on the same frame unless frames wait that no idle worker would take,
//! and offers the frame to data capture.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use defect_models::{Classification, Classifier, ClassifyError, DecodeOptions, Model, Verdict};

use super::{Pipeline, Queued, Ticket, elapsed_ms};
use crate::canary::{Canary, Side};
use crate::capture::Capture;
use crate::monitor::drift::FrameStats;
use crate::outcome::{DecisionResult, NoDecisionReason, Outcome, unix_ms};
use crate::serving::ModelSlot;

/// Starts `count` worker threads on the pipeline's queue; they stop when the queue closes.
pub fn spawn_workers(
    count: usize,
    queue: &crossbeam_channel::Receiver<Queued>,
    pipeline: &Pipeline,
    slot: &Arc<ModelSlot>,
    dct_scaling: bool,
    capture: Option<&Capture>,
    canary: Option<&Arc<Canary>>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let busy = Arc::new(AtomicUsize::new(0));
    (0..count)
        .map(|index| {
            let worker = Worker {
                busy: Arc::clone(&busy),
                count,
                queue: queue.clone(),
                pipeline: pipeline.clone(),
                slot: Arc::clone(slot),
                dct_scaling,
                classifier: None,
                capture: capture.cloned(),
                canary: canary.cloned(),
                shadow: None,
            };
            std::thread::Builder::new()
                .name(format!("inference-{index}"))
                .spawn(move || worker.run())
        })
        .collect()
}

struct Worker {
    /// Workers deciding a frame (or running one in shadow) now.
    busy: Arc<AtomicUsize>,
    /// Workers in all.
    count: usize,
    queue: crossbeam_channel::Receiver<Queued>,
    pipeline: Pipeline,
    slot: Arc<ModelSlot>,
    dct_scaling: bool,
    /// The classifier of the model this worker last ran.
    classifier: Option<Classifier>,
    /// Data capture, offered every decided frame.
    capture: Option<Capture>,
    /// The canary's evidence, when candidates may run in shadow.
    canary: Option<Arc<Canary>>,
    /// The classifier of the candidate this worker last ran in shadow.
    shadow: Option<Classifier>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(frame) = self.queue.recv() {
            self.busy.fetch_add(1, Ordering::AcqRel);
            self.decide(frame);
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn decide(&mut self, mut frame: Queued) {
        let ticket = &frame.ticket;
        if ticket.is_claimed() {
            // Its deadline passed while it waited; "no decision" is already out.
            return;
        }
        let Some(model) = self.slot.current() else {
            self.pipeline.no_decision(
                ticket,
                NoDecisionReason::NoModel,
                Some("no validated model is loaded".into()),
            );
            return;
        };
        let classifier = match self.classifier_for(&model) {
            Ok(classifier) => classifier,
            Err(error) => {
                tracing::error!(model = %model.manifest().name, %error, "cannot start the classifier");
                self.pipeline
                    .no_decision(ticket, NoDecisionReason::InferenceError, Some(error));
                return;
            }
        };
        match classifier.classify_bytes(&frame.bytes) {
            Ok(result) => {
                self.pipeline.metrics().classified(&result.timings);
                let mut outcome = decided(ticket, &model, &result);
                let stats = Some(frame_stats(&model, &result));
                let live = ticket.claim();
                if live {
                    self.pipeline.emit_live(outcome, ticket, stats);
                } else {
                    outcome.late = true;
                    tracing::warn!(station = %ticket.station, part = ticket.part, latency_ms = outcome.latency_ms, "decision came after the deadline; recorded, not published");
                    self.pipeline.emit_late(outcome, ticket, stats);
                }
                // After the outcome is on its way: the shadow run and capture never delay a
                // decision.
                let disagreement = self.shadow(&frame.bytes, &model, &result);
                if let Some(capture) = &self.capture {
                    let bytes = std::mem::take(&mut frame.bytes);
                    let ticket = &frame.ticket;
                    match disagreement {
                        Some((candidate, shadow)) => capture.offer_disagreement(
                            &ticket.station,
                            ticket.part,
                            ticket.acquired_ms,
                            (&model, &result),
                            (&candidate, &shadow),
                            bytes,
                        ),
                        None => capture.offer(
                            &ticket.station,
                            ticket.part,
                            ticket.acquired_ms,
                            &model,
                            &result,
                            bytes,
                        ),
                    }
                }
            }
            Err(error) => {
                let reason = match error {
                    ClassifyError::Decode(_) | ClassifyError::Preprocess(_) => {
                        NoDecisionReason::UnreadableImage
                    }
                    ClassifyError::Inference(_) => NoDecisionReason::InferenceError,
                };
                tracing::warn!(station = %ticket.station, part = ticket.part, reason = reason.name(), %error, "no decision");
                self.pipeline
                    .no_decision(ticket, reason, Some(error.to_string()));
            }
        }
    }

    /// Runs the candidate in shadow on a frame the model in service decided, unless more
    /// frames wait than there are idle workers to take them (then the run is skipped and
    /// counted: a shadow run never keeps a waiting frame from a worker). Returns the
    /// candidate and its result when the two models disagree.
    fn shadow(
        &mut self,
        bytes: &[u8],
        model: &Arc<Model>,
        live: &Classification,
    ) -> Option<(Arc<Model>, Classification)> {
        let canary = self.canary.clone()?;
        let candidate = self.slot.candidate()?;
        if candidate.digest() == model.digest() {
            return None;
        }
        let idle = self.count.saturating_sub(self.busy.load(Ordering::Acquire));
        if self.pipeline.queue_depth() > idle {
            canary.skipped();
            return None;
        }
        let stale = self
            .shadow
            .as_ref()
            .is_none_or(|c| c.model().digest() != candidate.digest());
        if stale {
            match candidate.classifier() {
                Ok(mut classifier) => {
                    classifier.set_decode_options(DecodeOptions::default(), self.dct_scaling);
                    self.shadow = Some(classifier);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot start the candidate's classifier");
                    canary.candidate_failed();
                    return None;
                }
            }
        }
        let shadow = self.shadow.as_mut()?.classify_bytes(bytes);
        let result = match shadow {
            Ok(result) => result,
            Err(error) => {
                tracing::debug!(%error, "the candidate failed on a frame");
                canary.candidate_failed();
                return None;
            }
        };
        let disagree = canary.compare(
            Side {
                result: live,
                labels: &model.manifest().output.labels,
            },
            model.manifest().model_version,
            Side {
                result: &result,
                labels: &candidate.manifest().output.labels,
            },
        );
        disagree.then_some((candidate, result))
    }

    /// The classifier for `model`, rebuilt when the model in service changed.
    fn classifier_for(&mut self, model: &Arc<Model>) -> Result<&mut Classifier, String> {
        let stale = self
            .classifier
            .as_ref()
            .is_none_or(|c| c.model().digest() != model.digest());
        if stale {
            let mut classifier = model.classifier().map_err(|e| e.to_string())?;
            classifier.set_decode_options(DecodeOptions::default(), self.dct_scaling);
            self.classifier = Some(classifier);
        }
        self.classifier
            .as_mut()
            .ok_or_else(|| "classifier missing".to_owned())
    }
}

/// The frame's statistics for drift monitoring: input brightness and contrast, the highest
/// defect-class score, and whether it was rejected.
fn frame_stats(model: &Model, result: &Classification) -> FrameStats {
    let output = &model.manifest().output;
    let defect_score = output
        .labels
        .iter()
        .zip(&result.scores)
        .filter(|(label, _)| output.defects.contains(label))
        .map(|(_, score)| *score)
        .fold(0.0f32, f32::max);
    FrameStats {
        brightness: result.input.brightness,
        contrast: result.input.contrast,
        defect_score,
        rejected: result.decision.verdict == Verdict::Reject,
    }
}

fn decided(ticket: &Ticket, model: &Model, result: &Classification) -> Outcome {
    let decision = &result.decision;
    Outcome {
        seq: 0,
        station: ticket.station.clone(),
        part: ticket.part,
        result: match decision.verdict {
            Verdict::Pass => DecisionResult::Pass,
            Verdict::Reject => DecisionResult::Reject,
        },
        class: u16::try_from(decision.class).unwrap_or(u16::MAX),
        label: model
            .manifest()
            .output
            .labels
            .get(decision.class)
            .cloned()
            .unwrap_or_default(),
        confidence_permille: Outcome::permille(decision.confidence),
        model_version: model.manifest().model_version,
        reason: None,
        detail: None,
        acquired_ms: ticket.acquired_ms,
        decided_ms: unix_ms(),
        latency_ms: elapsed_ms(ticket.received),
        late: false,
    }
}
