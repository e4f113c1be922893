//! Prometheus metrics: what the agent counts and measures, and the listener that serves them.
//!
//! This module owns the `defect_agent_*` metric names and the `[metrics]` listener:
//! `GET /metrics`, `/healthz` (the process answers) and `/readyz` (200 only when the pipeline
//! is ready, the heartbeat's `ready`). The frame path records into [`Metrics`] with atomic
//! counters and histograms only: no I/O, no await, nothing that can fail. What other
//! components already keep (the queue, the model in service, the broker link, readiness, the
//! result log's backlog and drops) is read when scraped, never copied. The text formats come
//! from `defect_shared::exposition`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use defect_models::Timings;
use defect_shared::exposition::Format;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

use crate::canary::{Canary, CanaryMetrics};
use crate::capture::{CaptureMetrics, CaptureShared};
use crate::health::Health;
use crate::monitor::{Board, BoardMetrics};
use crate::outcome::{NoDecisionReason, Outcome};
use crate::pipeline::Pipeline;
use crate::result_log::ResultLog;
use crate::serving::ModelSlot;

/// Prefix of every metric name.
const PREFIX: &str = "defect_agent";

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

/// When a frame arrived and when its live outcome was made: what the publish and end-to-end
/// latencies are measured from.
#[derive(Debug, Clone, Copy)]
pub struct FrameTimes {
    /// The frame's arrival at the pipeline.
    pub received: Instant,
    /// Its live outcome made (a decision or "no decision").
    pub decided: Instant,
}

/// What the frame path records into: shared by the pipeline, the inference workers, the output
/// stage and the MQTT session.
#[derive(Debug)]
pub struct Metrics {
    /// Frames taken, by station.
    frames_received: Family<StationLabels, Counter>,
    /// The configured stations' counters of `frames_received`, found without a lock.
    station_frames: HashMap<String, Counter>,
    /// Live pass and reject decisions, by station, result and class label.
    decisions: Family<DecisionLabels, Counter>,
    /// Live "no decision" outcomes, by station and reason.
    no_decisions: Family<NoDecisionLabels, Counter>,
    /// The per-stage latency family the four histograms below belong to.
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Decoding, per frame the model ran on.
    decode: Histogram,
    /// Preprocessing, per frame the model ran on.
    preprocess: Histogram,
    /// The model run, per frame.
    inference: Histogram,
    /// From the live outcome to its decision queued for the broker (result log write included).
    publish: Histogram,
    /// From the frame's arrival to its decision queued for the broker.
    end_to_end: Histogram,
}

impl Metrics {
    /// Metrics for the configured `stations`; their counters start at zero, so every station
    /// and every "no decision" reason is visible before it happens.
    pub fn new<'a>(stations: impl IntoIterator<Item = &'a str>) -> Metrics {
        let frames_received = Family::<StationLabels, Counter>::default();
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
        Metrics {
            decode: stage("decode"),
            preprocess: stage("preprocess"),
            inference: stage("inference"),
            publish: stage("publish"),
            end_to_end: latency_histogram(),
            frames_received,
            station_frames,
            decisions: Family::default(),
            no_decisions,
            stages,
        }
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

    /// Counts a live outcome; late model results are counted by `Health`, not here.
    pub fn outcome(&self, outcome: &Outcome) {
        if outcome.late {
            return;
        }
        match outcome.reason {
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
                    result: outcome.result.name(),
                    class: outcome.label.clone(),
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

    /// Records a live decision queued for the broker now.
    pub fn published(&self, times: FrameTimes) {
        self.publish.observe(times.decided.elapsed().as_secs_f64());
        self.end_to_end
            .observe(times.received.elapsed().as_secs_f64());
    }

    /// The registry one scrape encodes: the recorded metrics, then the values read from `live`.
    fn registry(&self, live: Live) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
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
        registry.register_with_unit(
            "stage_duration",
            "Time per frame in a stage: decode, preprocess and inference for frames the model ran on; publish from the live outcome to its decision queued for the broker, result log write included",
            Unit::Seconds,
            self.stages.clone(),
        );
        registry.register_with_unit(
            "end_to_end_latency",
            "From a frame's arrival to its live decision queued for the broker",
            Unit::Seconds,
            self.end_to_end.clone(),
        );
        registry.register_collector(Box::new(live));
        registry
    }
}

/// The components whose state a scrape reads as it is.
struct Live {
    health: Arc<Health>,
    slot: Arc<ModelSlot>,
    log: ResultLog,
    pipeline: Pipeline,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        gauge(
            e,
            "queue_depth_frames",
            "Frames waiting for an inference worker.",
            self.pipeline.queue_depth(),
        )?;
        gauge(
            e,
            "frames_in_flight",
            "Frames taken whose live outcome is not yet logged and completed.",
            self.pipeline.in_flight(),
        )?;
        let model = self.slot.current();
        gauge(
            e,
            "model_version",
            "model_version of the bundle in service (0 when none is).",
            model.as_ref().map_or(0, |m| m.manifest().model_version),
        )?;
        if let Some(model) = &model {
            let manifest = model.manifest();
            let labels = [
                ("name", manifest.name.as_str()),
                ("version", manifest.version.as_str()),
                ("sha256", model.digest()),
            ];
            let mut metric = e.encode_descriptor(
                "model_info",
                "The bundle in service: name, version and SHA-256 as labels, value 1.",
                None,
                MetricType::Gauge,
            )?;
            metric.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        gauge(
            e,
            "broker_connected",
            "1 while the MQTT broker connection is up.",
            i64::from(self.health.broker_connected()),
        )?;
        gauge(
            e,
            "ready",
            "1 when the pipeline is ready: the heartbeat's ready flag, and /readyz.",
            i64::from(self.health.ready()),
        )?;
        gauge(
            e,
            "result_log_backlog_entries",
            "Outcomes in the result log not yet delivered on the results topic.",
            self.log.backlog(),
        )?;
        let counts = self.health.counts();
        counter(
            e,
            "result_log_dropped_entries",
            "Undelivered outcomes dropped from the result log by retention since start.",
            self.log.dropped_total(),
        )?;
        counter(
            e,
            "decisions_not_sent",
            "Live decisions dropped because they could not reach the broker before their deadline.",
            counts.decisions_not_sent,
        )?;
        counter(
            e,
            "late_results",
            "Model results that came after their frame's deadline: logged, never published live.",
            counts.late,
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {address}: {source}")]
pub struct MetricsError {
    /// The configured address.
    pub address: String,
    /// The socket error.
    pub source: std::io::Error,
}

/// What the metrics listener reports on.
pub struct Sources {
    /// What the frame path recorded.
    pub metrics: Arc<Metrics>,
    /// Readiness, the broker link and the outcome counters.
    pub health: Arc<Health>,
    /// The model in service.
    pub slot: Arc<ModelSlot>,
    /// The result log (backlog, drops).
    pub log: ResultLog,
    /// The pipeline (queue depth, frames in flight).
    pub pipeline: Pipeline,
    /// Line monitoring: rates, alarms, drift scores.
    pub monitor: Option<Arc<Board>>,
    /// Data capture: store and upload counters.
    pub capture: Option<Arc<CaptureShared>>,
    /// The canary's evidence, when the model store is served.
    pub canary: Option<Arc<Canary>>,
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// Binds the metrics listener; the returned router serves `/metrics`, `/healthz` and
/// `/readyz`.
pub async fn bind(
    listen: &str,
    sources: Sources,
) -> Result<(SocketAddr, tokio::net::TcpListener, Router), MetricsError> {
    let error = |source| MetricsError {
        address: listen.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(error)?;
    let address = listener.local_addr().map_err(error)?;
    let Sources {
        metrics,
        health,
        slot,
        log,
        pipeline,
        monitor,
        capture,
        canary,
    } = sources;
    let mut registry = metrics.registry(Live {
        health: Arc::clone(&health),
        slot,
        log,
        pipeline,
    });
    if let Some(board) = monitor {
        registry.register_collector(Box::new(BoardMetrics(board)));
    }
    if let Some(capture) = capture {
        registry.register_collector(Box::new(CaptureMetrics(capture)));
    }
    if let Some(canary) = canary {
        registry.register_collector(Box::new(CanaryMetrics(canary)));
    }
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            registry: Arc::new(registry),
            health,
        });
    tracing::info!(%address, "metrics listening");
    Ok((address, listener, router))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "metrics server failed");
    }
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match defect_shared::exposition::render(&state.registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "metrics scrape failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::DecisionResult;

    fn outcome(result: DecisionResult, label: &str, reason: Option<NoDecisionReason>) -> Outcome {
        Outcome {
            seq: 0,
            station: "cam1".into(),
            part: 1,
            result,
            class: 0,
            label: label.into(),
            confidence_permille: 0,
            model_version: 1,
            reason,
            detail: None,
            acquired_ms: 0,
            decided_ms: 0,
            latency_ms: 0,
            late: false,
        }
    }

    fn text(metrics: &Metrics) -> String {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register("decisions", "", metrics.decisions.clone());
        registry.register("no_decisions", "", metrics.no_decisions.clone());
        registry.register("frames_received", "", metrics.frames_received.clone());
        registry.register_with_unit("stage_duration", "", Unit::Seconds, metrics.stages.clone());
        defect_shared::exposition::render(&registry, Format::Prometheus).expect("render")
    }

    #[test]
    fn outcomes_are_counted_by_station_result_class_and_reason_and_late_ones_are_not() {
        let metrics = Metrics::new(["cam1"]);
        metrics.frame_received("cam1");
        metrics.frame_received("cam9");
        metrics.outcome(&outcome(DecisionResult::Reject, "scratch", None));
        metrics.outcome(&outcome(
            DecisionResult::NoDecision,
            "",
            Some(NoDecisionReason::Deadline),
        ));
        let mut late = outcome(DecisionResult::Pass, "good", None);
        late.late = true;
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
        let metrics = Metrics::new(["cam1"]);
        metrics.classified(&Timings {
            decode: Duration::from_millis(3),
            preprocess: Duration::from_millis(1),
            inference: Duration::from_millis(20),
        });
        let text = text(&metrics);
        for stage in ["decode", "preprocess", "inference"] {
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
        assert!(
            text.contains("defect_agent_stage_duration_seconds_count{stage=\"publish\"} 0\n"),
            "{text}"
        );
    }
}
