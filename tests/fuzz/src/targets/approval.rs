//! Canary approvals and evidence: the approve topic's payload the updater records, and the
//! agent's shadow evidence the updater's canary policy reads.
//!
//! An approval is recorded only as 1 to 64 ASCII letters and digits, and it approves a
//! candidate only by that candidate's exact SHA-256 or `model_version`.

use model_updater::canary::{Evidence, approves};
use model_updater::mqtt::approval_text;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Reads `data` as an approval payload and as canary evidence.
pub fn run(data: &[u8]) {
    if let Some(text) = approval_text(data) {
        assert!(
            !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()),
            "approval {text:?} recorded"
        );
        if approves(&text, SHA, 7) {
            assert!(
                text == SHA || text == "7",
                "approval {text:?} approved another candidate"
            );
        }
    }
    let _ = serde_json::from_slice::<Evidence>(data);
}
