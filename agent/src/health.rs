//! Whether the whole pipeline is healthy, and the counters that say so.
//!
//! This module owns the `ready` flag of the heartbeat (model loaded, broker connected, frames
//! decided within their deadline) and the running counts behind it. Components report into
//! one shared [`Health`]; the heartbeat and the systemd watchdog read it, and it registers its
//! own gauges and counters for the metrics endpoint. It does not decide anything about frames
//! itself.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::outcome::{DecisionResult, NoDecisionReason, Outcome};

/// Outcomes looked at to judge whether frames are decided in time.
const WINDOW: usize = 50;

/// Largest share of recent frames that may miss their deadline while still `ready`.
const MAX_MISSED_SHARE: f64 = 0.2;

/// Shared health of the running agent.
#[derive(Debug, Default)]
pub struct Health {
    model_loaded: AtomicBool,
    broker_connected: AtomicBool,
    /// Recent frames: true when the frame missed its deadline or found the queue full.
    recent: Mutex<VecDeque<bool>>,
    outcomes: AtomicU64,
    passes: AtomicU64,
    rejects: AtomicU64,
    no_decisions: AtomicU64,
    late: AtomicU64,
    decisions_not_sent: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Live outcomes (one per frame).
    pub outcomes: u64,
    /// Pass decisions.
    pub passes: u64,
    /// Reject decisions.
    pub rejects: u64,
    /// "No decision" outcomes.
    pub no_decisions: u64,
    /// Model results that came after their frame's deadline.
    pub late: u64,
    /// Live decisions that could not reach the broker before their deadline.
    pub decisions_not_sent: u64,
}

impl Health {
    /// Records whether a validated model is serving.
    pub fn set_model_loaded(&self, loaded: bool) {
        self.model_loaded.store(loaded, Ordering::Relaxed);
    }

    /// Whether a validated model is serving.
    pub fn model_loaded(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
    }

    /// Records the broker connection state.
    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the broker connection is up.
    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// Counts an outcome; late results are counted apart and do not count as frames.
    pub fn record(&self, outcome: &Outcome) {
        if outcome.is_late() {
            self.late.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.outcomes.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome.result() {
            DecisionResult::Pass => &self.passes,
            DecisionResult::Reject => &self.rejects,
            DecisionResult::NoDecision => &self.no_decisions,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let missed = matches!(
            outcome.reason(),
            Some(NoDecisionReason::Deadline | NoDecisionReason::QueueFull)
        );
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == WINDOW {
                recent.pop_front();
            }
            recent.push_back(missed);
        }
    }

    /// Counts a live decision dropped because the broker could not take it in time.
    pub fn count_decision_not_sent(&self) {
        self.decisions_not_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// True when frames are being decided within their deadline.
    pub fn within_budget(&self) -> bool {
        let Ok(recent) = self.recent.lock() else {
            return false;
        };
        if recent.is_empty() {
            return true;
        }
        let missed = recent.iter().filter(|m| **m).count();
        (missed as f64) / (recent.len() as f64) <= MAX_MISSED_SHARE
    }

    /// The heartbeat's `ready`: model loaded, broker connected, frames decided in time.
    pub fn ready(&self) -> bool {
        self.model_loaded() && self.broker_connected() && self.within_budget()
    }

    /// Current counters.
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            outcomes: get(&self.outcomes),
            passes: get(&self.passes),
            rejects: get(&self.rejects),
            no_decisions: get(&self.no_decisions),
            late: get(&self.late),
            decisions_not_sent: get(&self.decisions_not_sent),
        }
    }
}

impl Health {
    /// Registers the broker link, readiness and the outcome counters the frame path does not
    /// keep itself (decisions not sent, late results) in `registry`, read when scraped.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(HealthMetrics(Arc::clone(self))));
    }
}

/// Health as a metrics collector.
struct HealthMetrics(Arc<Health>);

impl fmt::Debug for HealthMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthMetrics").finish_non_exhaustive()
    }
}

impl Collector for HealthMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let health = &self.0;
        for (name, help, value) in [
            (
                "broker_connected",
                "1 while the MQTT broker connection is up.",
                health.broker_connected(),
            ),
            (
                "ready",
                "1 when the pipeline is ready: the heartbeat's ready flag, and /readyz.",
                health.ready(),
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&i64::from(value))?;
        }
        let counts = health.counts();
        for (name, help, value) in [
            (
                "decisions_not_sent",
                "Live decisions dropped because they could not reach the broker before their deadline.",
                counts.decisions_not_sent,
            ),
            (
                "late_results",
                "Model results that came after their frame's deadline: logged, never published live.",
                counts.late,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Decided, Ruling};
    use defect_models::Verdict;

    fn outcome(reason: Option<NoDecisionReason>) -> Outcome {
        let ruling = match reason {
            Some(reason) => Ruling::NoDecision {
                reason,
                detail: None,
            },
            None => Ruling::Decided(Decided {
                verdict: Verdict::Pass,
                class: 0,
                label: String::new(),
                confidence_permille: 0,
                model_version: 1,
                late: false,
            }),
        };
        Outcome {
            seq: 0,
            station: "a".into(),
            part: 1,
            acquired_ms: 0,
            decided_ms: 0,
            latency_ms: 0,
            ruling,
        }
    }

    #[test]
    fn ready_needs_model_broker_and_frames_in_time() {
        let health = Health::default();
        assert!(!health.ready());
        health.set_model_loaded(true);
        health.set_broker_connected(true);
        assert!(health.ready());
        for _ in 0..10 {
            health.record(&outcome(Some(NoDecisionReason::Deadline)));
        }
        assert!(!health.ready(), "every recent frame missed its deadline");
        for _ in 0..WINDOW {
            health.record(&outcome(None));
        }
        assert!(health.ready());
        assert_eq!(health.counts().no_decisions, 10);
    }

    #[test]
    fn unreadable_images_do_not_make_the_pipeline_unready() {
        let health = Health::default();
        health.set_model_loaded(true);
        health.set_broker_connected(true);
        for _ in 0..10 {
            health.record(&outcome(Some(NoDecisionReason::UnreadableImage)));
        }
        assert!(health.ready());
    }
}
