//! From a received frame to its outcome: queue, deadline, workers, then the output stage.
//!
//! This module owns the rule that every frame gets exactly one live outcome, in time:
//! [`Pipeline::submit`] admits a frame only when it can still be decided before its deadline
//! behind the frames ahead of it (`admission`; otherwise "no decision" at once), puts it on a
//! queue bounded for memory (a full queue answers "no decision" at once too), a deadline timer answers "no decision" when the frame is not decided in time,
//! and the worker threads (`worker`) decode, preprocess and infer off tokio's threads. Whoever
//! finishes first claims the frame's [`Ticket`]; a model result that comes after the deadline
//! is kept as a late record, never published live. Outcomes go to the output stage (`output`)
//! which logs them before anything else happens and then hands them to the sinks (`sink`). What the frame path counts and
//! measures (`metrics`) the pipeline registers itself.
//! Once the pipeline is closed for shutdown, a frame still submitted (an upload that was
//! being received) gets "no decision" with the reason `shutting_down` at once.

mod admission;
mod hooks;
mod metrics;
mod output;
mod sink;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use hooks::{DecidedFrame, FrameHook, HookFactory};
pub use output::OutputStage;
pub use sink::{Delivery, OutcomeSink};
pub use worker::{WorkerSettings, Workers, spawn_workers};

pub use metrics::PipelineMetrics;

use crate::outcome::{FrameStats, FrameTimes, NoDecisionReason, Outcome, Ruling, unix_ms};
use crate::result_log::FrameIdentity;
use admission::{Admission, Admit};

/// What to do once a frame's live outcome is in the result log: answer an HTTP request,
/// remove a file from the hot folder. Given the outcome and whether it was logged.
pub type Completion = Box<dyn FnOnce(&Outcome, bool) + Send>;

/// One frame on its way to a decision.
pub struct FrameJob {
    /// Station the frame belongs to.
    pub station: String,
    /// Part id.
    pub part: u64,
    /// Acquisition (or arrival) time, Unix milliseconds.
    pub acquired_ms: u64,
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// Run once the live outcome is logged.
    pub completion: Option<Completion>,
    /// The frame file this frame was read from, recorded with its outcome in the result log
    /// so that the file is recognised as decided if the agent dies before completing it.
    pub identity: Option<FrameIdentity>,
}

/// Shared between the worker, the deadline timer and the output stage of one frame: the
/// frame's identity and times, and who made its live outcome. Whoever claims it first makes
/// the live outcome.
pub struct Ticket {
    /// Station the frame belongs to.
    pub station: String,
    /// Part id.
    pub part: u64,
    /// Acquisition (or arrival) time, Unix milliseconds.
    pub acquired_ms: u64,
    /// When the frame arrived.
    pub received: Instant,
    /// When its decision is due.
    pub deadline: Instant,
    claimed: AtomicBool,
    completion: Mutex<Option<Completion>>,
    identity: Option<FrameIdentity>,
}

impl Ticket {
    /// Claims the frame's live outcome; true for the first caller only.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Whether the live outcome was already made.
    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// The frame's arrival, and now as the moment its outcome is made.
    fn times_now(&self) -> FrameTimes {
        FrameTimes {
            received: self.received,
            decided: Instant::now(),
        }
    }

    fn take_completion(&self) -> Option<Completion> {
        self.completion.lock().ok().and_then(|mut c| c.take())
    }
}

/// A frame queued for the workers.
pub struct Queued {
    /// The encoded image.
    pub(crate) bytes: Vec<u8>,
    /// The frame's ticket.
    pub(crate) ticket: Arc<Ticket>,
}

/// An outcome on its way to the output stage.
pub struct Emitted {
    /// The outcome (its `seq` is assigned by the log).
    pub outcome: Outcome,
    /// What to run once it is logged (`None` for late records).
    pub completion: Option<Completion>,
    /// The frame's decision deadline, for the live publish.
    pub deadline: Instant,
    /// When the frame arrived and its outcome was made, for the latency metrics.
    pub times: FrameTimes,
    /// The frame's statistics for line monitoring, when the model ran on it.
    pub stats: Option<FrameStats>,
    /// The frame file of a live outcome, logged with it (`None` for late records).
    pub identity: Option<FrameIdentity>,
}

/// Handle to submit frames; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    queue: crossbeam_channel::Sender<Queued>,
    emit: mpsc::UnboundedSender<Emitted>,
    deadline: Duration,
    generated_parts: Arc<AtomicU64>,
    metrics: Arc<PipelineMetrics>,
    flight: Arc<Flight>,
    admission: Arc<Admission>,
}

/// Frames in flight, and what the shutdown waits on.
struct Flight {
    /// Frames submitted whose live outcome is not yet logged and completed.
    count: AtomicUsize,
    /// Notified whenever the count drops to zero.
    idle: Notify,
    /// Set once the pipeline takes no more frames.
    closed: AtomicBool,
    /// Cancelled at the end of the drain: pending deadline timers end.
    timers: CancellationToken,
}

/// The receiving ends the workers and the output stage are built from.
pub struct PipelineParts {
    /// Frames for the workers.
    pub queue: crossbeam_channel::Receiver<Queued>,
    /// Outcomes for the output stage.
    pub outcomes: mpsc::UnboundedReceiver<Emitted>,
}

impl Pipeline {
    /// A pipeline with a queue of at most `capacity` frames, a per-frame `deadline` and
    /// `workers` worker threads to judge admission by, recording into `metrics`.
    pub fn new(
        capacity: usize,
        deadline: Duration,
        workers: usize,
        metrics: Arc<PipelineMetrics>,
    ) -> (Pipeline, PipelineParts) {
        let (queue, queue_rx) = crossbeam_channel::bounded(capacity);
        let (emit, outcomes) = mpsc::unbounded_channel();
        let pipeline = Pipeline {
            queue,
            emit,
            deadline,
            generated_parts: Arc::new(AtomicU64::new(unix_ms())),
            metrics,
            flight: Arc::new(Flight {
                count: AtomicUsize::new(0),
                idle: Notify::new(),
                closed: AtomicBool::new(false),
                timers: CancellationToken::new(),
            }),
            admission: Arc::new(Admission::new(workers)),
        };
        (
            pipeline,
            PipelineParts {
                queue: queue_rx,
                outcomes,
            },
        )
    }

    /// A part id for a frame whose camera gave none: counts up from the agent's start time in
    /// milliseconds, so ids never repeat across restarts.
    pub fn generated_part_id(&self) -> u64 {
        self.generated_parts.fetch_add(1, Ordering::Relaxed)
    }

    /// Frames submitted whose live outcome is not yet logged and completed.
    pub fn in_flight(&self) -> usize {
        self.flight.count.load(Ordering::Acquire)
    }

    /// Takes no more frames: from now on a submitted frame gets "no decision" with the reason
    /// `shutting_down` at once.
    pub fn close(&self) {
        self.flight.closed.store(true, Ordering::Release);
    }

    /// Resolves once no frame is in flight: every live outcome is logged and completed.
    pub async fn drained(&self) {
        loop {
            let idle = self.flight.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a drop to zero in between is not missed.
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Ends the deadline timers of frames already decided; called once the pipeline drained.
    pub fn stop_timers(&self) {
        self.flight.timers.cancel();
    }

    /// Frames waiting in the queue for a worker.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// What the frame path records into.
    pub(crate) fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// The service-time estimate and the workers' occupation admission is judged by.
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Submits a frame. Never blocks: a frame that cannot be decided before its deadline, or
    /// that finds the queue full, yields "no decision" at once. Must be called within a tokio
    /// runtime (it arms the frame's deadline timer).
    pub fn submit(&self, job: FrameJob) {
        let Some((ticket, bytes)) = self.take_in(job) else {
            return;
        };
        let budget = ticket.deadline.saturating_duration_since(Instant::now());
        if let Admit::Refuse {
            expected,
            ahead,
            service,
            output,
        } = self.admission.admit(self.queue.len(), budget)
        {
            let detail = format!(
                "refused on arrival: {ahead} frames ahead at {:.1} ms each, then {:.1} ms to log it, would publish it in {} ms, after its {} ms deadline",
                service.as_secs_f64() * 1000.0,
                output.as_secs_f64() * 1000.0,
                expected.as_millis(),
                self.deadline.as_millis()
            );
            tracing::warn!(station = %ticket.station, part = ticket.part, %detail, "no decision");
            self.metrics.admission_refused(&ticket.station);
            self.no_decision(&ticket, NoDecisionReason::Deadline, Some(detail));
            return;
        }
        let queued = Queued {
            bytes,
            ticket: Arc::clone(&ticket),
        };
        if self.queue.try_send(queued).is_err() {
            let detail = format!(
                "{} frames already wait in memory (agent.queue_capacity)",
                self.queue.len()
            );
            tracing::warn!(station = %ticket.station, part = ticket.part, %detail, "queue full; no decision");
            self.no_decision(&ticket, NoDecisionReason::QueueFull, Some(detail));
            return;
        }
        let pipeline = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(ticket.deadline) => {}
                () = pipeline.flight.timers.cancelled() => return,
            }
            if !ticket.is_claimed() {
                let detail = format!("not decided within {} ms", pipeline.deadline.as_millis());
                pipeline.no_decision(&ticket, NoDecisionReason::Deadline, Some(detail));
            }
        });
    }

    /// Takes a frame in: counts it, makes its ticket, and answers "no decision" at once when
    /// the pipeline is closed. Returns the ticket and the frame's bytes to go on with.
    fn take_in(&self, job: FrameJob) -> Option<(Arc<Ticket>, Vec<u8>)> {
        let received = Instant::now();
        self.metrics.frame_received(&job.station);
        let ticket = Arc::new(Ticket {
            station: job.station,
            part: job.part,
            acquired_ms: job.acquired_ms,
            received,
            deadline: received + self.deadline,
            claimed: AtomicBool::new(false),
            completion: Mutex::new(job.completion),
            identity: job.identity,
        });
        self.flight.count.fetch_add(1, Ordering::AcqRel);
        if self.flight.closed.load(Ordering::Acquire) {
            tracing::warn!(station = %ticket.station, part = ticket.part, "frame arrived during shutdown; no decision");
            self.no_decision(
                &ticket,
                NoDecisionReason::ShuttingDown,
                Some("the agent is shutting down".into()),
            );
            return None;
        }
        Some((ticket, job.bytes))
    }

    /// Takes a frame its source already knows gets "no decision" (a quarantined file): it is
    /// logged, published and completed like any other outcome.
    pub fn submit_no_decision(&self, job: FrameJob, reason: NoDecisionReason, detail: String) {
        if let Some((ticket, _)) = self.take_in(job) {
            self.no_decision(&ticket, reason, Some(detail));
        }
    }

    /// Makes the frame's live "no decision" if nobody has claimed it yet.
    pub(crate) fn no_decision(
        &self,
        ticket: &Ticket,
        reason: NoDecisionReason,
        detail: Option<String>,
    ) {
        if !ticket.claim() {
            return;
        }
        self.emit_live(no_decision_outcome(ticket, reason, detail), ticket, None);
    }

    /// Sends a claimed frame's live outcome, and its statistics when the model ran, to the
    /// output stage.
    pub(crate) fn emit_live(&self, outcome: Outcome, ticket: &Ticket, stats: Option<FrameStats>) {
        let emitted = Emitted {
            outcome,
            completion: ticket.take_completion(),
            deadline: ticket.deadline,
            times: ticket.times_now(),
            stats,
            identity: ticket.identity.clone(),
        };
        if let Err(error) = self.emit.send(emitted) {
            // Only after the output stage stopped, at the very end of a shutdown.
            tracing::error!(
                part = error.0.outcome.part,
                "output stage gone; outcome lost"
            );
            self.finished();
        }
    }

    /// Sends a late model result to the output stage (logged, not published live).
    pub(crate) fn emit_late(&self, outcome: Outcome, ticket: &Ticket, stats: Option<FrameStats>) {
        let _ = self.emit.send(Emitted {
            outcome,
            completion: None,
            deadline: ticket.deadline,
            times: ticket.times_now(),
            stats,
            identity: None,
        });
    }

    /// Called by the output stage once a live outcome is logged and completed.
    pub(crate) fn finished(&self) {
        if self.flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.flight.idle.notify_waiters();
        }
    }
}

/// The outcome record of a "no decision".
pub(crate) fn no_decision_outcome(
    ticket: &Ticket,
    reason: NoDecisionReason,
    detail: Option<String>,
) -> Outcome {
    Outcome {
        seq: 0,
        station: ticket.station.clone(),
        part: ticket.part,
        acquired_ms: ticket.acquired_ms,
        decided_ms: unix_ms(),
        latency_ms: elapsed_ms(ticket.received),
        ruling: Ruling::NoDecision { reason, detail },
    }
}

/// Milliseconds since `since`, saturating.
pub(crate) fn elapsed_ms(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(part: u64) -> FrameJob {
        FrameJob {
            station: "cam1".into(),
            part,
            acquired_ms: 0,
            bytes: vec![0xff, 0xd8],
            completion: None,
            identity: None,
        }
    }

    #[tokio::test]
    async fn a_frame_submitted_after_close_gets_shutting_down_at_once() {
        let metrics = Arc::new(PipelineMetrics::new(["cam1"]));
        let (pipeline, mut parts) = Pipeline::new(4, Duration::from_secs(60), 1, metrics);
        pipeline.close();
        pipeline.submit(job(7));
        let emitted = parts.outcomes.try_recv().expect("an outcome at once");
        assert_eq!(emitted.outcome.part, 7);
        assert_eq!(
            emitted.outcome.reason(),
            Some(NoDecisionReason::ShuttingDown)
        );
        assert!(parts.queue.try_recv().is_err(), "the frame was queued");
    }

    #[tokio::test]
    async fn drained_resolves_when_the_last_frame_in_flight_is_finished() {
        let metrics = Arc::new(PipelineMetrics::new(["cam1"]));
        let (pipeline, mut parts) = Pipeline::new(4, Duration::from_secs(60), 1, metrics);
        pipeline.drained().await;
        pipeline.submit(job(1));
        pipeline.submit(job(2));
        assert_eq!(pipeline.in_flight(), 2);
        let waiter = tokio::spawn({
            let pipeline = pipeline.clone();
            async move { pipeline.drained().await }
        });
        for _ in 0..2 {
            let queued = parts.queue.try_recv().expect("queued");
            pipeline.no_decision(&queued.ticket, NoDecisionReason::NoModel, None);
            let emitted = parts.outcomes.recv().await.expect("emitted");
            assert_eq!(emitted.outcome.reason(), Some(NoDecisionReason::NoModel));
            assert!(!waiter.is_finished() || pipeline.in_flight() == 0);
            pipeline.finished();
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained resolved")
            .expect("waiter");
        assert_eq!(pipeline.in_flight(), 0);
        pipeline.stop_timers();
    }
}
