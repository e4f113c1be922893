//! Where outcomes go once they are in the result log.
//!
//! This module owns the [`OutcomeSink`] trait: everything that receives outcomes implements
//! it (the MQTT session's live decisions and `results` forwarder, line monitoring, the PLC
//! links), and the output stage hands every sink every logged outcome in order. A sink never
//! blocks the output stage: it queues what it has to do and returns.

use tokio::time::Instant;

use crate::outcome::{FrameStats, FrameTimes, Outcome};

/// What comes with an outcome besides the record itself.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// When the frame's decision was due: a live decision is useless after it.
    pub deadline: Instant,
    /// When the frame arrived and its outcome was made.
    pub times: FrameTimes,
    /// The frame's input statistics, when the model ran on it.
    pub stats: Option<FrameStats>,
}

/// A receiver of outcomes.
pub trait OutcomeSink: Send + Sync {
    /// Takes one outcome, in the order they were logged. A late model result
    /// ([`Outcome::is_late`]) comes too, for the record; it must never act as a live decision.
    /// Must not block.
    fn outcome(&self, outcome: &Outcome, delivery: &Delivery);

    /// New outcomes are in the result log, for sinks that forward the log itself.
    fn logged(&self) {}
}
