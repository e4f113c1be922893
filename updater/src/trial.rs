//! The verdict on a bundle on trial, from the agent's model health report.
//!
//! This module owns one pure decision: given the trial and the agent's latest report, is the
//! new bundle healthy (the agent validated it and serves it), failed (the agent refused it,
//! kept dying while loading it, or said nothing before the deadline), deferred (the agent
//! refused it on latency alone, which a busy box measures: try again later), or still pending.

use defect_models::health::{HealthState, ModelHealth, Refusal};

use crate::state::Trial;

/// The verdict on a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No verdict yet.
    Pending,
    /// The agent serves the bundle.
    Healthy,
    /// The bundle must be reverted, for this reason.
    Failed(String),
    /// The bundle must be reverted for now and tried again later: the agent measured it over
    /// its latency budget, which says as much about the box's load as about the model.
    Deferred(String),
}

/// Judges a trial at `now_ms` from the agent's report.
pub fn judge(
    trial: &Trial,
    report: Option<&ModelHealth>,
    now_ms: u64,
    max_attempts: u32,
) -> Verdict {
    let sha = &trial.candidate.sha256;
    if let Some(report) = report.filter(|r| &r.sha256 == sha) {
        match report.state {
            HealthState::Serving => return Verdict::Healthy,
            HealthState::Refused => {
                let reason = format!(
                    "the agent refused it: {}",
                    report.error.as_deref().unwrap_or("no reason given")
                );
                return match report.refusal {
                    Some(Refusal::OverBudget) => Verdict::Deferred(reason),
                    Some(Refusal::Rejected) | None => Verdict::Failed(reason),
                };
            }
            HealthState::Loading if report.attempt > max_attempts => {
                return Verdict::Failed(format!(
                    "the agent started loading it {} times without a verdict (at most {max_attempts})",
                    report.attempt
                ));
            }
            HealthState::Loading => {}
        }
    }
    if now_ms >= trial.deadline_ms {
        let waited_s = trial.deadline_ms.saturating_sub(trial.started_ms) / 1000;
        return Verdict::Failed(format!(
            "the agent did not report it serving within {waited_s} s (if the agent was not \
             running or writes its model_health_file elsewhere, the version may be good: \
             `model-updater forget-bad {}` lets it be tried again)",
            trial.candidate.model_version
        ));
    }
    Verdict::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ModelRef, TrialPhase};

    fn trial() -> Trial {
        Trial {
            candidate: ModelRef {
                model: "m".into(),
                model_version: 2,
                version: "2".into(),
                sha256: "new".into(),
            },
            restore_current: Some("old".into()),
            restore_previous: None,
            started_ms: 1_000,
            deadline_ms: 61_000,
            phase: TrialPhase::Running,
        }
    }

    fn report(sha: &str, state: HealthState, attempt: u32) -> ModelHealth {
        ModelHealth {
            v: 1,
            sha256: sha.into(),
            state,
            attempt,
            model_version: Some(2),
            error: Some("golden sample 3 misclassified".into()),
            refusal: None,
            agent_pid: 7,
            at_ms: 2_000,
        }
    }

    #[test]
    fn verdicts_follow_the_report_for_the_candidate_only() {
        let t = trial();
        assert_eq!(judge(&t, None, 2_000, 3), Verdict::Pending);
        let old = report("old", HealthState::Serving, 1);
        assert_eq!(judge(&t, Some(&old), 2_000, 3), Verdict::Pending);
        let serving = report("new", HealthState::Serving, 1);
        assert_eq!(judge(&t, Some(&serving), 2_000, 3), Verdict::Healthy);
        let refused = report("new", HealthState::Refused, 1);
        assert!(
            matches!(judge(&t, Some(&refused), 2_000, 3), Verdict::Failed(r) if r.contains("golden"))
        );
        let slow = ModelHealth {
            error: Some("median inference time 38.00 ms is over the latency budget".into()),
            refusal: Some(Refusal::OverBudget),
            ..report("new", HealthState::Refused, 1)
        };
        assert!(
            matches!(judge(&t, Some(&slow), 2_000, 3), Verdict::Deferred(r) if r.contains("latency"))
        );
        let rejected = ModelHealth {
            refusal: Some(Refusal::Rejected),
            ..report("new", HealthState::Refused, 1)
        };
        assert!(matches!(
            judge(&t, Some(&rejected), 2_000, 3),
            Verdict::Failed(_)
        ));
        let loading = report("new", HealthState::Loading, 3);
        assert_eq!(judge(&t, Some(&loading), 2_000, 3), Verdict::Pending);
        let looping = report("new", HealthState::Loading, 4);
        assert!(matches!(
            judge(&t, Some(&looping), 2_000, 3),
            Verdict::Failed(_)
        ));
        assert!(matches!(judge(&t, None, 61_000, 3), Verdict::Failed(r) if r.contains("60 s")));
    }
}
