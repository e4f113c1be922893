//! What the MQTT session measures: how long live decisions take to reach the broker's queue.
//!
//! This module owns `defect_agent_end_to_end_latency_seconds` and records the `publish`
//! stage's histogram it is given (that histogram belongs to the frame path's
//! `stage_duration` family, registered by the pipeline). Recording is histograms only: no I/O,
//! nothing that can fail.

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::FrameTimes;

/// The session's latency histograms; cheap to clone, every clone records into the same ones.
#[derive(Debug, Clone)]
pub struct SessionMetrics {
    /// From the live outcome to its decision queued for the broker (result log write included).
    publish: Histogram,
    /// From the frame's arrival to its decision queued for the broker.
    end_to_end: Histogram,
}

impl SessionMetrics {
    /// Records publish times into `publish` (the frame path's `publish` stage histogram) and
    /// end-to-end latencies into a histogram of its own, with the same buckets as the stage
    /// histograms: 0.5 ms doubling to about 8 s, then `+Inf`.
    pub fn new(publish: Histogram) -> SessionMetrics {
        SessionMetrics {
            publish,
            end_to_end: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
        }
    }

    /// Registers the end-to-end latency in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "end_to_end_latency",
            "From a frame's arrival to its live decision queued for the broker",
            Unit::Seconds,
            self.end_to_end.clone(),
        );
    }

    /// Records a live decision queued for the broker now.
    pub fn published(&self, times: FrameTimes) {
        self.publish.observe(times.decided.elapsed().as_secs_f64());
        self.end_to_end
            .observe(times.received.elapsed().as_secs_f64());
    }
}
