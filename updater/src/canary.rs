//! The canary policy: when a candidate running in shadow is promoted or rejected.
//!
//! This module owns the judgement, free of I/O: the agent's evidence on the candidate (its
//! `canary.json`), the box's policy (`[canary]`), the time in shadow and whether ops approved.
//! A defect the candidate would let through (reject to pass) above the limit rejects it at
//! once; so do a refusal by the agent's validation gate and the time limit. Agreement and the
//! latency ratio are judged only once the minimum of frames was compared. A candidate is
//! promoted only when every rule holds (and, with manual approval, ops approved it); it is
//! never promoted on missing or foreign evidence.

use serde::{Deserialize, Serialize};

/// Who promotes a candidate whose evidence holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// The updater, as soon as the policy holds.
    Auto,
    /// Ops, with `model-updater approve`, once the policy holds.
    Manual,
}

/// The box's canary policy (`[canary]`), the default for every version; a target's own
/// `canary` custom field overrides it ([`CanaryOverrides`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPolicy {
    /// Versions run in shadow first (unless their target says otherwise).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The agent's evidence file (`<agent state_dir>/canary.json`).
    #[serde(default = "default_evidence_file")]
    pub evidence_file: std::path::PathBuf,
    /// Frames both models must have decided before agreement and latency are judged.
    #[serde(default = "default_min_frames")]
    pub min_frames: u64,
    /// Least share of frames decided alike.
    #[serde(default = "default_min_agreement")]
    pub min_agreement: f64,
    /// Most frames the candidate would pass that the model in service rejects.
    #[serde(default)]
    pub max_reject_to_pass: u64,
    /// Largest ratio of the candidate's median inference time to the model in service's.
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    /// Longest time in shadow, in seconds, before an unproven candidate is rejected.
    #[serde(default = "default_max_shadow_s")]
    pub max_shadow_s: u64,
    /// `auto` or `manual` promotion.
    #[serde(default = "default_approval")]
    pub approval: Approval,
}

const fn default_enabled() -> bool {
    true
}
fn default_evidence_file() -> std::path::PathBuf {
    std::path::PathBuf::from("/var/lib/defect-agent/state/canary.json")
}
const fn default_min_frames() -> u64 {
    500
}
const fn default_min_agreement() -> f64 {
    0.98
}
const fn default_max_latency_ratio() -> f64 {
    1.5
}
const fn default_max_shadow_s() -> u64 {
    7 * 24 * 3600
}
const fn default_approval() -> Approval {
    Approval::Auto
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            enabled: default_enabled(),
            evidence_file: default_evidence_file(),
            min_frames: default_min_frames(),
            min_agreement: default_min_agreement(),
            max_reject_to_pass: 0,
            max_latency_ratio: default_max_latency_ratio(),
            max_shadow_s: default_max_shadow_s(),
            approval: default_approval(),
        }
    }
}

/// A target's canary policy, set by ops when publishing (`repo add-target --canary JSON`):
/// each field given overrides the box's `[canary]`; `"enabled": false` installs the version
/// without a canary, `true` runs one even on a box without `[canary]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryOverrides {
    /// Run this version in shadow first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Overrides `min_frames`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_frames: Option<u64>,
    /// Overrides `min_agreement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
    /// Overrides `max_reject_to_pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reject_to_pass: Option<u64>,
    /// Overrides `max_latency_ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
    /// Overrides `max_shadow_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shadow_s: Option<u64>,
    /// Overrides `approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

impl CanaryOverrides {
    /// What is wrong with the values, naming the field; `None` when they are usable.
    pub fn problem(&self) -> Option<String> {
        if let Some(a) = self.min_agreement
            && !(0.0..=1.0).contains(&a)
        {
            return Some(format!("min_agreement {a} is outside 0 to 1"));
        }
        if let Some(r) = self.max_latency_ratio
            && !(r.is_finite() && r > 0.0)
        {
            return Some(format!("max_latency_ratio {r} must be above 0"));
        }
        None
    }
}

/// The policy a version runs under: the box's default with the target's overrides; `None`
/// when it is installed without a canary.
pub fn policy_for(
    default: Option<&CanaryPolicy>,
    target: Option<&CanaryOverrides>,
) -> Option<CanaryPolicy> {
    let mut policy = match (default, target) {
        (Some(default), _) => default.clone(),
        (None, Some(t)) if t.enabled == Some(true) => CanaryPolicy::default(),
        (None, _) => return None,
    };
    if let Some(t) = target {
        policy.enabled = t.enabled.unwrap_or(policy.enabled);
        policy.min_frames = t.min_frames.unwrap_or(policy.min_frames);
        policy.min_agreement = t.min_agreement.unwrap_or(policy.min_agreement);
        policy.max_reject_to_pass = t.max_reject_to_pass.unwrap_or(policy.max_reject_to_pass);
        policy.max_latency_ratio = t.max_latency_ratio.unwrap_or(policy.max_latency_ratio);
        policy.max_shadow_s = t.max_shadow_s.unwrap_or(policy.max_shadow_s);
        policy.approval = t.approval.unwrap_or(policy.approval);
    }
    policy.enabled.then_some(policy)
}

/// Whether an approval (the file `model-updater approve` or the MQTT approve topic wrote)
/// names the candidate: its SHA-256 or its `model_version`.
pub fn approves(approval: &str, sha256: &str, model_version: u64) -> bool {
    let approval = approval.trim();
    approval == sha256 || approval == model_version.to_string()
}

/// The part of the agent's evidence the policy reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Evidence {
    /// `shadow` or `refused`.
    pub state: String,
    /// The candidate the evidence is about.
    pub candidate_sha256: String,
    /// Frames both models decided.
    pub frames: u64,
    /// Frames decided alike.
    pub agree: u64,
    /// Frames the model in service rejected and the candidate passed.
    pub reject_to_pass: u64,
    /// Median inference time of the model in service, ms.
    pub current_ms_p50: f64,
    /// Median inference time of the candidate, ms.
    pub candidate_ms_p50: f64,
}

/// What to do with the candidate now.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Keep it in shadow; why.
    Wait(String),
    /// Promote it: the same switch and trial as any install.
    Promote,
    /// Reject it: the current model stays, the version is marked bad; why.
    Reject(String),
}

/// Judges the candidate `sha256`, in shadow for `shadow_ms`, on `evidence`.
pub fn judge(
    policy: &CanaryPolicy,
    sha256: &str,
    evidence: Option<&Evidence>,
    shadow_ms: u64,
    approved: bool,
) -> Judgement {
    let timed_out = shadow_ms > policy.max_shadow_s.saturating_mul(1000);
    let Some(e) = evidence.filter(|e| e.candidate_sha256 == sha256) else {
        if timed_out {
            return Judgement::Reject(format!(
                "no evidence from the agent within {} s in shadow",
                policy.max_shadow_s
            ));
        }
        return Judgement::Wait("no evidence from the agent yet".into());
    };
    if e.state == "refused" {
        return Judgement::Reject("the agent's validation gate refused it".into());
    }
    if e.reject_to_pass > policy.max_reject_to_pass {
        return Judgement::Reject(format!(
            "it would have passed {} part(s) the model in service rejected (at most {})",
            e.reject_to_pass, policy.max_reject_to_pass
        ));
    }
    if e.frames < policy.min_frames {
        if timed_out {
            return Judgement::Reject(format!(
                "only {} of {} frames compared within {} s in shadow",
                e.frames, policy.min_frames, policy.max_shadow_s
            ));
        }
        return Judgement::Wait(format!(
            "{} of {} frames compared",
            e.frames, policy.min_frames
        ));
    }
    let agreement = e.agree as f64 / e.frames as f64;
    if agreement < policy.min_agreement {
        return Judgement::Reject(format!(
            "agreement {agreement:.4} is below {}",
            policy.min_agreement
        ));
    }
    if e.current_ms_p50 > 0.0 {
        let ratio = e.candidate_ms_p50 / e.current_ms_p50;
        if ratio > policy.max_latency_ratio {
            return Judgement::Reject(format!(
                "median inference {:.2} ms is {ratio:.2} times the model in service's {:.2} ms (at most {})",
                e.candidate_ms_p50, e.current_ms_p50, policy.max_latency_ratio
            ));
        }
    }
    if policy.approval == Approval::Manual && !approved {
        return Judgement::Wait(
            "the evidence holds; awaiting approval (model-updater approve)".into(),
        );
    }
    Judgement::Promote
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_overrides_the_box_default_field_by_field_and_may_switch_it_on_or_off() {
        let default = policy();
        let stricter = CanaryOverrides {
            min_frames: Some(5000),
            ..CanaryOverrides::default()
        };
        let p = policy_for(Some(&default), Some(&stricter)).expect("a canary");
        assert_eq!((p.min_frames, p.min_agreement), (5000, 0.98));
        let off = CanaryOverrides {
            enabled: Some(false),
            ..CanaryOverrides::default()
        };
        assert_eq!(policy_for(Some(&default), Some(&off)), None);
        let on = CanaryOverrides {
            enabled: Some(true),
            ..CanaryOverrides::default()
        };
        assert_eq!(policy_for(None, Some(&on)), Some(CanaryPolicy::default()));
        assert_eq!(policy_for(None, Some(&stricter)), None);
        assert_eq!(policy_for(None, None), None);
        assert!(approves("abc\n", "abc", 7) && approves("7", "abc", 7) && !approves("8", "abc", 7));
    }

    fn policy() -> CanaryPolicy {
        CanaryPolicy {
            enabled: true,
            evidence_file: "canary.json".into(),
            min_frames: 100,
            min_agreement: 0.98,
            max_reject_to_pass: 0,
            max_latency_ratio: 1.5,
            max_shadow_s: 60,
            approval: Approval::Auto,
        }
    }

    fn evidence(frames: u64, agree: u64, reject_to_pass: u64) -> Evidence {
        Evidence {
            state: "shadow".into(),
            candidate_sha256: "abc".into(),
            frames,
            agree,
            reject_to_pass,
            current_ms_p50: 6.0,
            candidate_ms_p50: 6.5,
        }
    }

    #[test]
    fn an_agreeing_candidate_is_promoted_only_after_the_minimum_of_frames() {
        let p = policy();
        assert!(matches!(
            judge(&p, "abc", Some(&evidence(99, 99, 0)), 1000, false),
            Judgement::Wait(_)
        ));
        assert_eq!(
            judge(&p, "abc", Some(&evidence(100, 99, 0)), 1000, false),
            Judgement::Promote
        );
    }

    #[test]
    fn a_defect_let_through_rejects_at_once_and_low_agreement_after_the_minimum() {
        let p = policy();
        assert!(matches!(
            judge(&p, "abc", Some(&evidence(3, 2, 1)), 1000, false),
            Judgement::Reject(_)
        ));
        assert!(matches!(
            judge(&p, "abc", Some(&evidence(100, 97, 0)), 1000, false),
            Judgement::Reject(_)
        ));
    }

    #[test]
    fn missing_or_foreign_evidence_never_promotes_and_time_runs_out() {
        let p = policy();
        let foreign = Evidence {
            candidate_sha256: "other".into(),
            ..evidence(1000, 1000, 0)
        };
        assert!(matches!(
            judge(&p, "abc", Some(&foreign), 1000, true),
            Judgement::Wait(_)
        ));
        assert!(matches!(
            judge(&p, "abc", None, 1000, true),
            Judgement::Wait(_)
        ));
        assert!(matches!(
            judge(&p, "abc", None, 61_000, true),
            Judgement::Reject(_)
        ));
        assert!(matches!(
            judge(&p, "abc", Some(&evidence(50, 50, 0)), 61_000, true),
            Judgement::Reject(_)
        ));
    }

    #[test]
    fn a_slow_candidate_is_rejected_and_manual_approval_waits_for_ops() {
        let mut p = policy();
        let slow = Evidence {
            candidate_ms_p50: 10.0,
            ..evidence(100, 100, 0)
        };
        assert!(matches!(
            judge(&p, "abc", Some(&slow), 1000, false),
            Judgement::Reject(_)
        ));
        p.approval = Approval::Manual;
        assert!(matches!(
            judge(&p, "abc", Some(&evidence(100, 100, 0)), 1000, false),
            Judgement::Wait(_)
        ));
        assert_eq!(
            judge(&p, "abc", Some(&evidence(100, 100, 0)), 1000, true),
            Judgement::Promote
        );
    }
}
