//! Data capture as a frame hook.
//!
//! This module owns offering every decided frame to data capture after its outcome is on its
//! way: a frame the candidate disagreed on is offered as a disagreement, any other by the
//! sampling rules. Capture takes the frame's bytes; it runs last.

use super::Capture;
use crate::pipeline::{DecidedFrame, FrameHook};

impl FrameHook for Capture {
    fn after_decision(&mut self, frame: &mut DecidedFrame<'_>) {
        let bytes = std::mem::take(&mut frame.bytes);
        match frame.disagreement.take() {
            Some((candidate, shadow)) => self.offer_disagreement(
                frame.station,
                frame.part,
                frame.acquired_ms,
                (frame.model.as_ref(), frame.result),
                (candidate.as_ref(), &shadow),
                bytes,
            ),
            None => self.offer(
                frame.station,
                frame.part,
                frame.acquired_ms,
                frame.model,
                frame.result,
                bytes,
            ),
        }
    }
}
