//! What the agent decided about one part: the record every other component passes on.
//!
//! This module owns [`Outcome`] (one per frame, whether decided, refused or late) with its
//! [`Ruling`] (a decision, or no decision and why), the result codes PLCs see, the reason codes
//! of "no decision", and the statistics of a frame the model ran on. Its serde form is the
//! flat record the result log keeps; how outcomes are encoded on the wire is `mqtt::payload`'s.

use defect_models::Verdict;
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
    /// Decoding, preprocessing or inference panicked on this frame. The panic was isolated to
    /// it: the worker discarded the model state it ran and goes on with the next frame.
    InternalError,
    /// The frame was in flight each time the agent died, twice: it was moved to the quarantine
    /// folder instead of being decided again.
    Quarantined,
}

impl NoDecisionReason {
    /// Every reason, in code order.
    pub const ALL: [NoDecisionReason; 8] = [
        NoDecisionReason::QueueFull,
        NoDecisionReason::NoModel,
        NoDecisionReason::UnreadableImage,
        NoDecisionReason::InferenceError,
        NoDecisionReason::Deadline,
        NoDecisionReason::ShuttingDown,
        NoDecisionReason::InternalError,
        NoDecisionReason::Quarantined,
    ];

    /// Wire code (1 to 8); 0 on the wire means "no reason" (a real decision).
    pub const fn code(self) -> u8 {
        match self {
            NoDecisionReason::QueueFull => 1,
            NoDecisionReason::NoModel => 2,
            NoDecisionReason::UnreadableImage => 3,
            NoDecisionReason::InferenceError => 4,
            NoDecisionReason::Deadline => 5,
            NoDecisionReason::ShuttingDown => 6,
            NoDecisionReason::InternalError => 7,
            NoDecisionReason::Quarantined => 8,
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
            NoDecisionReason::InternalError => "internal_error",
            NoDecisionReason::Quarantined => "quarantined",
        }
    }
}

/// What happened to one frame: the record logged, published and answered.
///
/// The frame's identity and times are common to every outcome; what was decided is a
/// [`Ruling`], so a "no decision" cannot carry a class and a pass cannot carry a reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "OutcomeRecord", try_from = "OutcomeRecord")]
pub struct Outcome {
    /// Result log sequence number, assigned when the outcome is logged; increases across
    /// restarts, so a PLC can de-duplicate by it.
    pub seq: u64,
    /// Station id the frame came from.
    pub station: String,
    /// Part id from the camera, or generated when the camera gave none.
    pub part: u64,
    /// When the frame was acquired (or received), in Unix milliseconds.
    pub acquired_ms: u64,
    /// When the outcome was made, in Unix milliseconds.
    pub decided_ms: u64,
    /// From the frame's arrival to the outcome, in milliseconds.
    pub latency_ms: u32,
    /// What was decided.
    pub ruling: Ruling,
}

/// A decision, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Ruling {
    /// The model decided the part.
    Decided(Decided),
    /// No decision could be made; the PLC treats the part as a reject.
    NoDecision {
        /// Why.
        reason: NoDecisionReason,
        /// Human-readable detail, such as the decoder's error.
        detail: Option<String>,
    },
}

/// What the model decided about a part.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// Pass or reject.
    pub verdict: Verdict,
    /// Index of the decided class in the model's labels.
    pub class: u16,
    /// The decided class's label.
    pub label: String,
    /// Confidence of the decided class in per-mille.
    pub confidence_permille: u16,
    /// `model_version` of the bundle that decided.
    pub model_version: u64,
    /// The decision arrived after "no decision" had already been published for the frame:
    /// recorded for traceability, never published as a live decision.
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

    /// Pass, reject or no decision.
    pub fn result(&self) -> DecisionResult {
        match &self.ruling {
            Ruling::Decided(decided) => match decided.verdict {
                Verdict::Pass => DecisionResult::Pass,
                Verdict::Reject => DecisionResult::Reject,
            },
            Ruling::NoDecision { .. } => DecisionResult::NoDecision,
        }
    }

    /// The model's decision, when there is one.
    pub fn decided(&self) -> Option<&Decided> {
        match &self.ruling {
            Ruling::Decided(decided) => Some(decided),
            Ruling::NoDecision { .. } => None,
        }
    }

    /// Why there is no decision; `None` for pass and reject.
    pub fn reason(&self) -> Option<NoDecisionReason> {
        match &self.ruling {
            Ruling::Decided(_) => None,
            Ruling::NoDecision { reason, .. } => Some(*reason),
        }
    }

    /// The failure's detail of a "no decision", when one was given.
    pub fn detail(&self) -> Option<&str> {
        match &self.ruling {
            Ruling::Decided(_) => None,
            Ruling::NoDecision { detail, .. } => detail.as_deref(),
        }
    }

    /// Index of the decided class (0 with no decision).
    pub fn class(&self) -> u16 {
        self.decided().map_or(0, |d| d.class)
    }

    /// The decided class's label (empty with no decision).
    pub fn label(&self) -> &str {
        self.decided().map_or("", |d| d.label.as_str())
    }

    /// Confidence of the decided class in per-mille (0 with no decision).
    pub fn confidence_permille(&self) -> u16 {
        self.decided().map_or(0, |d| d.confidence_permille)
    }

    /// `model_version` of the bundle that decided (0 when none did).
    pub fn model_version(&self) -> u64 {
        self.decided().map_or(0, |d| d.model_version)
    }

    /// A decision that arrived after its frame's "no decision" was published.
    pub fn is_late(&self) -> bool {
        self.decided().is_some_and(|d| d.late)
    }
}

/// The stored and forwarded form of an [`Outcome`]: the flat record the result log has always
/// kept, so logs written by earlier versions read unchanged.
#[derive(Serialize, Deserialize)]
struct OutcomeRecord {
    seq: u64,
    station: String,
    part: u64,
    result: DecisionResult,
    class: u16,
    label: String,
    confidence_permille: u16,
    model_version: u64,
    reason: Option<NoDecisionReason>,
    detail: Option<String>,
    acquired_ms: u64,
    decided_ms: u64,
    latency_ms: u32,
    late: bool,
}

impl From<Outcome> for OutcomeRecord {
    fn from(outcome: Outcome) -> Self {
        let result = outcome.result();
        let Outcome {
            seq,
            station,
            part,
            acquired_ms,
            decided_ms,
            latency_ms,
            ruling,
        } = outcome;
        let mut record = OutcomeRecord {
            seq,
            station,
            part,
            result,
            class: 0,
            label: String::new(),
            confidence_permille: 0,
            model_version: 0,
            reason: None,
            detail: None,
            acquired_ms,
            decided_ms,
            latency_ms,
            late: false,
        };
        match ruling {
            Ruling::Decided(decided) => {
                record.class = decided.class;
                record.label = decided.label;
                record.confidence_permille = decided.confidence_permille;
                record.model_version = decided.model_version;
                record.late = decided.late;
            }
            Ruling::NoDecision { reason, detail } => {
                record.reason = Some(reason);
                record.detail = detail;
            }
        }
        record
    }
}

/// A stored record that no [`Outcome`] can be.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A "no decision" without its reason.
    #[error("a no_decision record without a reason")]
    NoReason,
    /// A pass or reject that names a reason.
    #[error("a {result} record with the no-decision reason {reason}")]
    DecidedWithReason {
        /// The record's result.
        result: &'static str,
        /// The reason it names.
        reason: &'static str,
    },
}

impl TryFrom<OutcomeRecord> for Outcome {
    type Error = RecordError;

    fn try_from(record: OutcomeRecord) -> Result<Self, Self::Error> {
        let verdict = match (record.result, record.reason) {
            (DecisionResult::NoDecision, None) => return Err(RecordError::NoReason),
            (DecisionResult::NoDecision, Some(_)) => None,
            (result, Some(reason)) => {
                return Err(RecordError::DecidedWithReason {
                    result: result.name(),
                    reason: reason.name(),
                });
            }
            (DecisionResult::Pass, None) => Some(Verdict::Pass),
            (DecisionResult::Reject, None) => Some(Verdict::Reject),
        };
        let ruling = match (verdict, record.reason) {
            (Some(verdict), _) => Ruling::Decided(Decided {
                verdict,
                class: record.class,
                label: record.label,
                confidence_permille: record.confidence_permille,
                model_version: record.model_version,
                late: record.late,
            }),
            (None, reason) => Ruling::NoDecision {
                reason: reason.ok_or(RecordError::NoReason)?,
                detail: record.detail,
            },
        };
        Ok(Outcome {
            seq: record.seq,
            station: record.station,
            part: record.part,
            acquired_ms: record.acquired_ms,
            decided_ms: record.decided_ms,
            latency_ms: record.latency_ms,
            ruling,
        })
    }
}

/// Statistics of one frame the model ran on, for drift monitoring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameStats {
    /// Mean pixel value of the model input, 0-255.
    pub brightness: f32,
    /// Pixel standard deviation of the model input, 0-255.
    pub contrast: f32,
    /// Highest score among the defect classes, 0-1.
    pub defect_score: f32,
    /// The model rejected the part.
    pub rejected: bool,
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

/// Outcomes for the unit tests of the modules that take them.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// An outcome of part 1 at station `cam1`, decided by model_version 1 with `label` (class
    /// 0), or a "no decision" when `result` says so (for `reason`, or the deadline).
    pub(crate) fn outcome(
        result: DecisionResult,
        label: &str,
        reason: Option<NoDecisionReason>,
    ) -> Outcome {
        let ruling = match result {
            DecisionResult::NoDecision => Ruling::NoDecision {
                reason: reason.unwrap_or(NoDecisionReason::Deadline),
                detail: None,
            },
            DecisionResult::Pass | DecisionResult::Reject => Ruling::Decided(Decided {
                verdict: if result == DecisionResult::Reject {
                    Verdict::Reject
                } else {
                    Verdict::Pass
                },
                class: 0,
                label: label.into(),
                confidence_permille: 0,
                model_version: 1,
                late: false,
            }),
        };
        Outcome {
            seq: 0,
            station: "cam1".into(),
            part: 1,
            acquired_ms: 0,
            decided_ms: 0,
            latency_ms: 0,
            ruling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_distinct_and_nonzero() {
        let mut codes: Vec<u8> = NoDecisionReason::ALL.iter().map(|r| r.code()).collect();
        codes.dedup();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    fn frame(ruling: Ruling) -> Outcome {
        Outcome {
            seq: 7,
            station: "cam1".into(),
            part: 42,
            acquired_ms: 1_000,
            decided_ms: 1_010,
            latency_ms: 10,
            ruling,
        }
    }

    #[test]
    fn the_stored_record_is_the_flat_form_of_earlier_versions() {
        let stored = r#"{"seq":7,"station":"cam1","part":42,"result":"reject","class":2,"label":"scratch","confidence_permille":987,"model_version":3,"reason":null,"detail":null,"acquired_ms":1000,"decided_ms":1010,"latency_ms":10,"late":true}"#;
        let outcome: Outcome = serde_json::from_str(stored).expect("an earlier record reads");
        assert_eq!(
            outcome,
            frame(Ruling::Decided(Decided {
                verdict: Verdict::Reject,
                class: 2,
                label: "scratch".into(),
                confidence_permille: 987,
                model_version: 3,
                late: true,
            }))
        );
        assert_eq!(serde_json::to_string(&outcome).expect("encodes"), stored);
    }

    #[test]
    fn a_no_decision_round_trips_without_class_or_model() {
        let outcome = frame(Ruling::NoDecision {
            reason: NoDecisionReason::Deadline,
            detail: Some("not decided within 100 ms".into()),
        });
        let json = serde_json::to_string(&outcome).expect("encodes");
        assert!(
            json.contains(r#""result":"no_decision","class":0,"label":"""#),
            "{json}"
        );
        let back: Outcome = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, outcome);
        assert_eq!(back.result(), DecisionResult::NoDecision);
        assert_eq!(back.reason(), Some(NoDecisionReason::Deadline));
        assert_eq!(back.model_version(), 0);
        assert!(!back.is_late());
    }

    #[test]
    fn records_no_outcome_can_be_are_refused() {
        let no_reason = r#"{"seq":1,"station":"a","part":1,"result":"no_decision","class":0,"label":"","confidence_permille":0,"model_version":0,"reason":null,"detail":null,"acquired_ms":0,"decided_ms":0,"latency_ms":0,"late":false}"#;
        let error = serde_json::from_str::<Outcome>(no_reason).expect_err("refused");
        assert!(error.to_string().contains("without a reason"), "{error}");
        let pass_with_reason = no_reason
            .replace(r#""no_decision""#, r#""pass""#)
            .replace(r#""reason":null"#, r#""reason":"deadline""#);
        let error = serde_json::from_str::<Outcome>(&pass_with_reason).expect_err("refused");
        assert!(error.to_string().contains("pass record"), "{error}");
    }

    #[test]
    fn permille_rounds_and_clamps() {
        assert_eq!(Outcome::permille(0.9876), 988);
        assert_eq!(Outcome::permille(1.5), 1000);
        assert_eq!(Outcome::permille(-0.1), 0);
        assert_eq!(Outcome::permille(f32::NAN), 0);
    }
}
