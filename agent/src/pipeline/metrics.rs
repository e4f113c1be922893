//! What the frame path counts and measures, and the pipeline's gauges.
//!
//! This module owns the pipeline's `defect_agent_*` metric families: frames received, live
//! decisions and "no decision" outcomes, the per-stage latency family (`stage_duration`,
//! whose `publish` histogram the MQTT session records into), and the queue depth and frames in
//! flight, read from the [`Pipeline`] when scraped. Recording is atomic counters and histograms
//! only: no I/O, no await, nothing that can fail. It does not own the registry nor the
//! listener that serves it.

use std::collections::HashMap;
use std::fmt;

use defect_models::Timings;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::Pipeline;
use crate::outcome::{NoDecisionReason, Outcome};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StationLabels {
    station: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    station: String,
    result: &'static str,
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoDecisionLabels {
    station: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// A latency histogram: 0.5 ms doubling to about 8 s, then `+Inf`.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// What the frame path records into: shared by the pipeline, the inference workers and the
/// output stage.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Frames taken, by station.
    frames_received: Family<StationLabels, Counter>,
    /// The configured stations' counters of `frames_received`, found without a lock.
    station_frames: HashMap<String, Counter>,
    /// Live pass and reject decisions, by station, result and class label.
    decisions: Family<DecisionLabels, Counter>,
    /// Live "no decision" outcomes, by station and reason.
    no_decisions: Family<NoDecisionLabels, Counter>,
    /// Frames refused on arrival because they could not be decided before their deadline
    /// (counted in `no_decisions` under `deadline` as well), by station.
    admission_refused: Family<StationLabels, Counter>,
    /// The per-stage latency family the four histograms below belong to.
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Decoding, per frame the model ran on.
    decode: Histogram,
    /// Preprocessing, per frame the model ran on.
    preprocess: Histogram,
    /// The model run, per frame.
    inference: Histogram,
    /// From the live outcome to its decision queued for the broker (result log write
    /// included); recorded by the MQTT session.
    publish: Histogram,
}

impl PipelineMetrics {
    /// Metrics for the configured `stations`; their counters start at zero, so every station
    /// and every "no decision" reason is visible before it happens.
    pub fn new<'a>(stations: impl IntoIterator<Item = &'a str>) -> PipelineMetrics {
        let frames_received = Family::<StationLabels, Counter>::default();
        let admission_refused = Family::<StationLabels, Counter>::default();
        let no_decisions = Family::<NoDecisionLabels, Counter>::default();
        let mut station_frames = HashMap::new();
        for station in stations {
            let labels = StationLabels {
                station: station.to_owned(),
            };
            station_frames.insert(
                station.to_owned(),
                frames_received.get_or_create_owned(&labels),
            );
            admission_refused.get_or_create_owned(&labels);
            for reason in NoDecisionReason::ALL {
                no_decisions.get_or_create_owned(&NoDecisionLabels {
                    station: station.to_owned(),
                    reason: reason.name(),
                });
            }
        }
        let stages: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let stage = |stage| stages.get_or_create_owned(&StageLabels { stage });
        PipelineMetrics {
            decode: stage("decode"),
            preprocess: stage("preprocess"),
            inference: stage("inference"),
            publish: stage("publish"),
            frames_received,
            station_frames,
            decisions: Family::default(),
            no_decisions,
            admission_refused,
            stages,
        }
    }

    /// The `publish` stage's histogram, for whoever queues decisions for the broker: from the
    /// live outcome to its decision queued, in seconds.
    pub fn publish_stage(&self) -> Histogram {
        self.publish.clone()
    }

    /// Counts a frame taken for `station`.
    pub fn frame_received(&self, station: &str) {
        match self.station_frames.get(station) {
            Some(counter) => counter.inc(),
            None => self
                .frames_received
                .get_or_create(&StationLabels {
                    station: station.to_owned(),
                })
                .inc(),
        };
    }

    /// Counts a frame refused on arrival for `station`: it could not be decided in time.
    pub fn admission_refused(&self, station: &str) {
        self.admission_refused
            .get_or_create(&StationLabels {
                station: station.to_owned(),
            })
            .inc();
    }

    /// Counts a live outcome; late model results are counted by `Health`, not here.
    pub fn outcome(&self, outcome: &Outcome) {
        if outcome.is_late() {
            return;
        }
        match outcome.reason() {
            Some(reason) => self
                .no_decisions
                .get_or_create(&NoDecisionLabels {
                    station: outcome.station.clone(),
                    reason: reason.name(),
                })
                .inc(),
            None => self
                .decisions
                .get_or_create(&DecisionLabels {
                    station: outcome.station.clone(),
                    result: outcome.result().name(),
                    class: outcome.label().to_owned(),
                })
                .inc(),
        };
    }

    /// Records the stage times of a frame the model ran on.
    pub fn classified(&self, timings: &Timings) {
        self.decode.observe(timings.decode.as_secs_f64());
        self.preprocess.observe(timings.preprocess.as_secs_f64());
        self.inference.observe(timings.inference.as_secs_f64());
    }

    /// Registers the recorded families in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "frames_received",
            "Frames taken from hot folders and HTTP uploads, by station",
            self.frames_received.clone(),
        );
        registry.register(
            "decisions",
            "Live pass and reject decisions, by station, result and class label",
            self.decisions.clone(),
        );
        registry.register(
            "no_decisions",
            "Live no-decision outcomes, by station and reason code name",
            self.no_decisions.clone(),
        );
        registry.register(
            "admission_refused",
            "Frames refused on arrival because, behind the frames ahead of them at the measured service time, they could not be decided before their deadline (also counted as no_decisions with reason deadline), by station",
            self.admission_refused.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "Time per frame in a stage: decode, preprocess and inference for frames the model ran on; publish from the live outcome to its decision queued for the broker, result log write included",
            Unit::Seconds,
            self.stages.clone(),
        );
    }
}

impl Pipeline {
    /// Registers the frame path's families and the queue depth and frames-in-flight gauges
    /// in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
        registry.register_collector(Box::new(PipelineGauges(self.clone())));
    }
}

/// The pipeline's state, read when scraped.
struct PipelineGauges(Pipeline);

impl fmt::Debug for PipelineGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineGauges").finish_non_exhaustive()
    }
}

impl Collector for PipelineGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for (name, help, value) in [
            (
                "queue_depth_frames",
                "Frames waiting for an inference worker.",
                self.0.queue_depth(),
            ),
            (
                "frames_in_flight",
                "Frames taken whose live outcome is not yet logged and completed.",
                self.0.in_flight(),
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        let service = self
            .0
            .admission()
            .service_time()
            .map_or(0.0, |service| service.as_secs_f64());
        encoder
            .encode_descriptor(
                "service_time_estimate",
                "Estimated time a worker takes to decode, preprocess and infer one frame: the median of the last 32 frames, 0 before the first. Admission judges each arriving frame's chance to meet its deadline by it.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?
            .encode_gauge(&service)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use defect_shared::exposition::Format;

    use super::*;
    use crate::outcome::{DecisionResult, Ruling};

    fn outcome(result: DecisionResult, label: &str, reason: Option<NoDecisionReason>) -> Outcome {
        crate::outcome::fixture::outcome(result, label, reason)
    }

    fn text(metrics: &PipelineMetrics) -> String {
        let mut registry = Registry::with_prefix("defect_agent");
        metrics.register(&mut registry);
        defect_shared::exposition::render(&registry, Format::Prometheus).expect("render")
    }

    #[test]
    fn outcomes_are_counted_by_station_result_class_and_reason_and_late_ones_are_not() {
        let metrics = PipelineMetrics::new(["cam1"]);
        metrics.frame_received("cam1");
        metrics.frame_received("cam9");
        metrics.outcome(&outcome(DecisionResult::Reject, "scratch", None));
        metrics.outcome(&outcome(
            DecisionResult::NoDecision,
            "",
            Some(NoDecisionReason::Deadline),
        ));
        let mut late = outcome(DecisionResult::Pass, "good", None);
        if let Ruling::Decided(decided) = &mut late.ruling {
            decided.late = true;
        }
        metrics.outcome(&late);
        let text = text(&metrics);
        for line in [
            "defect_agent_frames_received_total{station=\"cam1\"} 1\n",
            "defect_agent_frames_received_total{station=\"cam9\"} 1\n",
            "defect_agent_decisions_total{station=\"cam1\",result=\"reject\",class=\"scratch\"} 1\n",
            "defect_agent_no_decisions_total{station=\"cam1\",reason=\"deadline\"} 1\n",
            "defect_agent_no_decisions_total{station=\"cam1\",reason=\"queue_full\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("class=\"good\""),
            "a late result was counted:\n{text}"
        );
    }

    #[test]
    fn stage_times_land_in_their_stage_histogram() {
        let metrics = PipelineMetrics::new(["cam1"]);
        metrics.classified(&Timings {
            decode: Duration::from_millis(3),
            preprocess: Duration::from_millis(1),
            inference: Duration::from_millis(20),
        });
        metrics.publish_stage().observe(0.002);
        let text = text(&metrics);
        for stage in ["decode", "preprocess", "inference", "publish"] {
            let line =
                format!("defect_agent_stage_duration_seconds_count{{stage=\"{stage}\"}} 1\n");
            assert!(text.contains(&line), "{line:?} missing from:\n{text}");
        }
        assert!(
            text.contains(
                "defect_agent_stage_duration_seconds_bucket{le=\"0.004\",stage=\"decode\"} 1\n"
            ),
            "{text}"
        );
    }
}
