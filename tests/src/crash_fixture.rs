//! The outcomes the result-log crash test writes and checks.
//!
//! The writer program (`src/bin/result-log-writer.rs`) and the test
//! (`tests/result_log_crash.rs`) both use [`expected`], so every entry found after a crash can
//! be checked byte for byte.

use defect_agent::outcome::{Decided, NoDecisionReason, Outcome, Ruling};
use defect_models::Verdict;

/// The outcome written under `seq`: a function of the seq alone.
pub fn expected(seq: u64) -> Outcome {
    let kind = seq % 3;
    let reason = (kind == 2).then(|| NoDecisionReason::ALL[(seq % 6) as usize]);
    let acquired_ms = 1_700_000_000_000 + seq * 7;
    let ruling = match (kind, reason) {
        (0 | 1, _) | (_, None) => Ruling::Decided(Decided {
            verdict: if kind == 0 {
                Verdict::Pass
            } else {
                Verdict::Reject
            },
            class: (seq % 4) as u16,
            label: format!("class-{}", seq % 4),
            confidence_permille: (seq % 1001) as u16,
            model_version: 1 + seq / 100,
            late: seq.is_multiple_of(13),
        }),
        (_, Some(reason)) => Ruling::NoDecision {
            reason,
            // Sizes vary from a few bytes to a few hundred, so entries straddle sled's buffers.
            detail: Some(format!(
                "{} at {seq}: {}",
                reason.name(),
                "x".repeat((seq % 300) as usize)
            )),
        },
    };
    Outcome {
        seq,
        station: format!("station-{}", seq % 5),
        part: seq.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        acquired_ms,
        decided_ms: acquired_ms + 3 + seq % 50,
        latency_ms: (seq % 500) as u32,
        ruling,
    }
}
