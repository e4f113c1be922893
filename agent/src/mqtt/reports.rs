//! What the services hand the MQTT session, and the topics it goes out on.
//!
//! This module owns the session's side of the services' reporting traits: as an
//! [`OutcomeSink`] the session publishes live decisions and forwards the result log on
//! `results`; as the line monitor's [`Reporter`] it publishes alarm and drift states retained.
//! The services know nothing of topics or payloads.

use crate::monitor::Reporter;
use crate::monitor::alarms::AlarmEvent;
use crate::monitor::drift::DriftReport;
use crate::mqtt::Publisher;
use crate::mqtt::payload;
use crate::outcome::{Outcome, unix_ms};
use crate::pipeline::{Delivery, OutcomeSink};

impl OutcomeSink for Publisher {
    fn outcome(&self, outcome: &Outcome, delivery: &Delivery) {
        // A late result is on `results` with the rest of the log, never a live decision.
        if !outcome.is_late() {
            self.decision(outcome, delivery.deadline, delivery.times);
        }
    }

    fn logged(&self) {
        self.results_available();
    }
}

impl Reporter for Publisher {
    fn alarm(&self, station: &str, event: &AlarmEvent) {
        self.retained(
            self.topics().alarm(station, event.kind.name()),
            payload::alarm(event, unix_ms()),
        );
    }

    fn drift(&self, station: &str, report: &DriftReport, model_version: u64) {
        self.retained(
            self.topics().drift(station),
            payload::drift(report, model_version, unix_ms()),
        );
    }
}
