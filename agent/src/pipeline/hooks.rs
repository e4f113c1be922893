//! Work done on a decided frame after its outcome is on its way.
//!
//! This module owns the [`FrameHook`] trait: the canary's shadow run and data capture are
//! hooks a worker calls, in order, once the frame's live outcome has left for the output
//! stage, so they never delay a decision. Each worker thread has its own hooks (a hook may
//! keep per-thread state, such as the candidate's classifier).

use std::sync::Arc;

use defect_models::{Classification, Model};

/// A frame the model in service decided, as the hooks see it.
pub struct DecidedFrame<'a> {
    /// Station the frame belongs to.
    pub station: &'a str,
    /// Part id.
    pub part: u64,
    /// Acquisition (or arrival) time, Unix milliseconds.
    pub acquired_ms: u64,
    /// The encoded image; a hook may take it (the last one to need it).
    pub bytes: Vec<u8>,
    /// The model that decided.
    pub model: &'a Arc<Model>,
    /// Its result.
    pub result: &'a Classification,
    /// More frames wait than there are idle workers to take them: optional work should be
    /// skipped so that no waiting frame is kept from a worker.
    pub frames_waiting: bool,
    /// A candidate model's different result on the same frame, when a hook ran one (the
    /// shadow run) and it disagreed.
    pub disagreement: Option<(Arc<Model>, Classification)>,
}

/// Work done on a decided frame after its outcome is on its way.
pub trait FrameHook: Send {
    /// Called once per decided frame, on the worker's thread.
    fn after_decision(&mut self, frame: &mut DecidedFrame<'_>);
}

/// Makes one worker's hook; called once per worker thread.
pub type HookFactory = Arc<dyn Fn() -> Box<dyn FrameHook> + Send + Sync>;
