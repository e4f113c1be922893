//! What the agent decided about one part: the record every other component passes on.
//!
//! This module owns [`Outcome`] (one per frame, whether decided, refused or late), the result
//! codes PLCs see, and the reason codes of "no decision". It does not own how outcomes are
//! encoded on the wire (`mqtt::payload`) or stored (`result_log`).

use serde::{Deserialize, Serialize};

/// The result code a PLC acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionResult {
    /// The part is good.
    Pass,
    /// The part is defective.
    Reject,
    /// No decision could be made in time; the PLC treats it as a reject.
    NoDecision,
}

impl DecisionResult {
    /// Wire code: 0 pass, 1 reject, 2 no decision.
    pub const fn code(self) -> u8 {
        match self {
            DecisionResult::Pass => 0,
            DecisionResult::Reject => 1,
            DecisionResult::NoDecision => 2,
        }
    }

    /// Lowercase name, as used in logs and HTTP answers.
    pub const fn name(self) -> &'static str {
        match self {
            DecisionResult::Pass => "pass",
            DecisionResult::Reject => "reject",
            DecisionResult::NoDecision => "no_decision",
        }
    }
}

/// Why a frame got "no decision".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDecisionReason {
    /// Every worker was busy and the queue was full when the frame arrived.
    QueueFull,
    /// No validated model was loaded.
    NoModel,
    /// The frame's bytes are not a readable image (empty, truncated, corrupt, too large).
    UnreadableImage,
    /// The model failed while running.
    InferenceError,
    /// The decision deadline passed before inference finished.
    Deadline,
    /// The agent was shutting down and could not decide the frame.
    ShuttingDown,
}

impl NoDecisionReason {
    /// Every reason, in code order.
    pub const ALL: [NoDecisionReason; 6] = [
        NoDecisionReason::QueueFull,
        NoDecisionReason::NoModel,
        NoDecisionReason::UnreadableImage,
        NoDecisionReason::InferenceError,
        NoDecisionReason::Deadline,
        NoDecisionReason::ShuttingDown,
    ];

    /// Wire code (1 to 6); 0 on the wire means "no reason" (a real decision).
    pub const fn code(self) -> u8 {
        match self {
            NoDecisionReason::QueueFull => 1,
            NoDecisionReason::NoModel => 2,
            NoDecisionReason::UnreadableImage => 3,
            NoDecisionReason::InferenceError => 4,
            NoDecisionReason::Deadline => 5,
            NoDecisionReason::ShuttingDown => 6,
        }
    }

    /// snake_case name, as used in logs, HTTP answers and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            NoDecisionReason::QueueFull => "queue_full",
            NoDecisionReason::NoModel => "no_model",
            NoDecisionReason::UnreadableImage => "unreadable_image",
            NoDecisionReason::InferenceError => "inference_error",
            NoDecisionReason::Deadline => "deadline",
            NoDecisionReason::ShuttingDown => "shutting_down",
        }
    }
}

/// What happened to one frame: the record logged, published and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Result log sequence number, assigned when the outcome is logged; increases across
    /// restarts, so a PLC can de-duplicate by it.
    pub seq: u64,
    /// Station id the frame came from.
    pub station: String,
    /// Part id from the camera, or generated when the camera gave none.
    pub part: u64,
    /// Pass, reject or no decision.
    pub result: DecisionResult,
    /// Index of the decided class in the model's labels (0 with no decision).
    pub class: u16,
    /// Decided class label (empty with no decision).
    pub label: String,
    /// Confidence of the decided class in per-mille (0 with no decision).
    pub confidence_permille: u16,
    /// `model_version` of the bundle that decided (0 when none did).
    pub model_version: u64,
    /// Why there is no decision; `None` for pass and reject.
    pub reason: Option<NoDecisionReason>,
    /// Human-readable detail of a failure, such as the decoder's error.
    pub detail: Option<String>,
    /// When the frame was acquired (or received), in Unix milliseconds.
    pub acquired_ms: u64,
    /// When the outcome was made, in Unix milliseconds.
    pub decided_ms: u64,
    /// From the frame's arrival to the outcome, in milliseconds.
    pub latency_ms: u32,
    /// The model's result arrived after "no decision" had already been published for the
    /// frame: recorded for traceability, never published as a live decision.
    pub late: bool,
}

impl Outcome {
    /// Confidence in per-mille from a 0-1 score, clamped.
    pub fn permille(score: f32) -> u16 {
        if score.is_nan() {
            return 0;
        }
        // Clamped to 0..=1000 first, so the conversion cannot truncate.
        (score.clamp(0.0, 1.0) * 1000.0).round() as u16
    }
}

/// Current wall-clock time in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a frame arrived and when its live outcome was made: what the publish and end-to-end
/// latencies are measured from.
#[derive(Debug, Clone, Copy)]
pub struct FrameTimes {
    /// The frame's arrival at the pipeline.
    pub received: tokio::time::Instant,
    /// Its live outcome made (a decision or "no decision").
    pub decided: tokio::time::Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_distinct_and_nonzero() {
        let mut codes: Vec<u8> = NoDecisionReason::ALL.iter().map(|r| r.code()).collect();
        codes.dedup();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn permille_rounds_and_clamps() {
        assert_eq!(Outcome::permille(0.9876), 988);
        assert_eq!(Outcome::permille(1.5), 1000);
        assert_eq!(Outcome::permille(-0.1), 0);
        assert_eq!(Outcome::permille(f32::NAN), 0);
    }
}
