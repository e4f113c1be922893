//! The inference worker threads.
//!
//! This module owns the dedicated threads that decode, preprocess and run the model, one frame
//! at a time each, off tokio's threads (tract runs one inference on one thread). A worker takes
//! the model in service for every frame, so a new model takes over at a frame boundary; it
//! skips frames whose deadline already answered for them, and turns every failure into a
//! "no decision" with its reason. After a frame's live outcome is on its way, the worker
//! calls its hooks (`hooks`: the canary's shadow run, data capture) on the decided frame.
//! The threads end when the pipeline's workers are stopped, and are joined.
//!
//! # Panic isolation
//!
//! Decoding, preprocessing and inference of one frame run under `catch_unwind` (release builds
//! unwind, see the workspace's `[profile.release]`). A panic there gives that frame a "no
//! decision" with the reason `internal_error`; the worker drops the classifier it ran, so the
//! next frame starts from freshly built model state, and goes on. A panic in a hook is caught
//! and logged the same way and never touches the frame's outcome, which is already out.

use defect_shared::error_chain::Chain;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use defect_models::{Classification, Classifier, ClassifyError, DecodeOptions, Model, Verdict};

use super::hooks::{DecidedFrame, FrameHook, HookFactory};
use super::{Pipeline, Queued, Ticket, elapsed_ms};
use crate::outcome::{Decided, FrameStats, NoDecisionReason, Outcome, Ruling, unix_ms};
use crate::serving::ModelSlot;

/// The running worker threads.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stop: Option<crossbeam_channel::Sender<()>>,
}

impl Workers {
    /// How many threads run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Stops the threads once the frames queued now are done, and waits for them to end.
    /// Blocking: call it from a blocking context.
    pub fn stop_and_join(mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let name = thread.thread().name().map(str::to_owned);
            if thread.join().is_err() {
                tracing::error!(thread = ?name, "an inference worker ended in a panic");
            }
        }
    }
}

/// What the workers run with.
pub struct WorkerSettings {
    /// Threads to start.
    pub count: usize,
    /// Where the model in service is taken from, per frame.
    pub slot: Arc<ModelSlot>,
    /// Decode large JPEGs at a reduced DCT scale when the model needs fewer pixels.
    pub dct_scaling: bool,
    /// The hooks called on every decided frame, in order; one of each per thread.
    pub hooks: Vec<HookFactory>,
}

/// Starts the worker threads on the pipeline's queue.
pub fn spawn_workers(
    settings: WorkerSettings,
    queue: &crossbeam_channel::Receiver<Queued>,
    pipeline: &Pipeline,
) -> std::io::Result<Workers> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let mut threads = Vec::with_capacity(settings.count);
    for index in 0..settings.count {
        let worker = Worker {
            count: settings.count,
            queue: queue.clone(),
            stopped: stopped.clone(),
            pipeline: pipeline.clone(),
            slot: Arc::clone(&settings.slot),
            dct_scaling: settings.dct_scaling,
            classifier: None,
            hooks: settings.hooks.iter().map(|make| make()).collect(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("inference-{index}"))
            .spawn(move || worker.run());
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                Workers {
                    threads,
                    stop: Some(stop),
                }
                .stop_and_join();
                return Err(error);
            }
        }
    }
    Ok(Workers {
        threads,
        stop: Some(stop),
    })
}

struct Worker {
    /// Workers in all.
    count: usize,
    queue: crossbeam_channel::Receiver<Queued>,
    /// Disconnected when the workers are to stop.
    stopped: crossbeam_channel::Receiver<()>,
    pipeline: Pipeline,
    slot: Arc<ModelSlot>,
    dct_scaling: bool,
    /// The classifier of the model this worker last ran.
    classifier: Option<Classifier>,
    /// Called on every decided frame, after its outcome is on its way.
    hooks: Vec<Box<dyn FrameHook>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let frame = crossbeam_channel::select! {
                recv(self.queue) -> frame => frame,
                recv(self.stopped) -> _ => self.queue.try_recv().map_err(|_| crossbeam_channel::RecvError),
            };
            let Ok(frame) = frame else {
                return;
            };
            self.pipeline.admission().started();
            self.decide(frame);
            self.pipeline.admission().finished();
        }
    }

    fn decide(&mut self, frame: Queued) {
        let Queued { bytes, ticket } = frame;
        if ticket.is_claimed() {
            // Its deadline passed while it waited; "no decision" is already out.
            return;
        }
        let Some(model) = self.slot.current() else {
            self.pipeline.no_decision(
                &ticket,
                NoDecisionReason::NoModel,
                Some("no validated model is loaded".into()),
            );
            return;
        };
        // A frame that first builds the classifier (a new model, or after a panic) runs cold:
        // its time says nothing about the frames after it, so admission does not learn from it.
        let warm = self
            .classifier
            .as_ref()
            .is_some_and(|classifier| classifier.model().digest() == model.digest());
        let started = Instant::now();
        let classified = catch_unwind(AssertUnwindSafe(|| self.classify(&model, &bytes)));
        let result = match classified {
            Ok(Ok(result)) => {
                if warm {
                    self.pipeline.admission().record(started.elapsed());
                }
                result
            }
            Ok(Err((reason, detail))) => {
                tracing::warn!(station = %ticket.station, part = ticket.part, reason = reason.name(), error = %detail, "no decision");
                self.pipeline.no_decision(&ticket, reason, Some(detail));
                return;
            }
            Err(panic) => {
                // The classifier may be half way through a frame: never run it again.
                self.classifier = None;
                let message = defect_models::frame::panic_text(panic.as_ref());
                tracing::error!(
                    station = %ticket.station,
                    part = ticket.part,
                    panic = %message,
                    "decoding or inference panicked on this frame; it gets no decision, and the model state is rebuilt for the next frame"
                );
                self.pipeline.no_decision(
                    &ticket,
                    NoDecisionReason::InternalError,
                    Some(format!("decoding or inference panicked: {message}")),
                );
                return;
            }
        };
        self.pipeline.metrics().classified(&result.timings);
        let mut outcome = decided(&ticket, &model, &result);
        let stats = Some(frame_stats(&model, &result));
        // A decision made so close to its deadline that logging it (then publishing it) cannot
        // end in time would never reach the PLC: the part gets its "no decision" now, within
        // the grace a no-decision has, and the model's result is recorded as late.
        let left = ticket
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let output = self.pipeline.admission().output_time();
        if left <= output && !ticket.is_claimed() {
            let detail = format!(
                "decided {} ms before its deadline, less than the {:.1} ms logging and publishing take",
                left.as_millis(),
                output.as_secs_f64() * 1000.0
            );
            self.pipeline
                .no_decision(&ticket, NoDecisionReason::Deadline, Some(detail));
        }
        if ticket.claim() {
            self.pipeline.emit_live(outcome, &ticket, stats);
        } else {
            if let Ruling::Decided(decided) = &mut outcome.ruling {
                decided.late = true;
            }
            tracing::warn!(station = %ticket.station, part = ticket.part, latency_ms = outcome.latency_ms, "decision came after the deadline; recorded, not published");
            self.pipeline.emit_late(outcome, &ticket, stats);
        }
        // The outcome is on its way: the hooks never delay a decision.
        self.run_hooks(&ticket, bytes, &model, &result);
    }

    /// Decodes, preprocesses and classifies one frame with `model`, building the classifier
    /// first when the model in service changed. A failure comes back as the frame's
    /// no-decision reason and its detail.
    fn classify(
        &mut self,
        model: &Arc<Model>,
        bytes: &[u8],
    ) -> Result<Classification, (NoDecisionReason, String)> {
        let classifier = match self.classifier_for(model) {
            Ok(classifier) => classifier,
            Err(error) => {
                tracing::error!(model = %model.manifest().name, error = %Chain(&error), "cannot start the classifier");
                return Err((NoDecisionReason::InferenceError, Chain(&error).to_string()));
            }
        };
        #[cfg(feature = "fault-injection")]
        crate::fault::on_decode(bytes);
        classifier.classify_bytes(bytes).map_err(|error| {
            let reason = match error {
                ClassifyError::Decode(_) | ClassifyError::Preprocess(_) => {
                    NoDecisionReason::UnreadableImage
                }
                ClassifyError::Inference(_) => NoDecisionReason::InferenceError,
            };
            (reason, Chain(&error).to_string())
        })
    }

    /// Calls the hooks on a decided frame.
    fn run_hooks(
        &mut self,
        ticket: &Ticket,
        bytes: Vec<u8>,
        model: &Arc<Model>,
        result: &Classification,
    ) {
        if self.hooks.is_empty() {
            return;
        }
        let idle = self.count.saturating_sub(self.pipeline.admission().busy());
        let mut frame = DecidedFrame {
            station: &ticket.station,
            part: ticket.part,
            acquired_ms: ticket.acquired_ms,
            bytes,
            model,
            result,
            frames_waiting: self.pipeline.queue_depth() > idle,
            disagreement: None,
        };
        for hook in &mut self.hooks {
            let called = catch_unwind(AssertUnwindSafe(|| hook.after_decision(&mut frame)));
            if let Err(panic) = called {
                tracing::error!(
                    station = %ticket.station,
                    part = ticket.part,
                    panic = %defect_models::frame::panic_text(panic.as_ref()),
                    "a hook on the decided frame panicked; the frame's outcome stands"
                );
            }
        }
    }

    /// The classifier for `model`, rebuilt when the model in service changed.
    fn classifier_for(
        &mut self,
        model: &Arc<Model>,
    ) -> Result<&mut Classifier, defect_models::ModelError> {
        let classifier = match self.classifier.take() {
            Some(classifier) if classifier.model().digest() == model.digest() => classifier,
            _ => {
                let mut classifier = model.classifier()?;
                classifier.set_decode_options(DecodeOptions::default(), self.dct_scaling);
                classifier
            }
        };
        Ok(self.classifier.insert(classifier))
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
        acquired_ms: ticket.acquired_ms,
        decided_ms: unix_ms(),
        latency_ms: elapsed_ms(ticket.received),
        ruling: Ruling::Decided(Decided {
            verdict: decision.verdict,
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
            late: false,
        }),
    }
}
