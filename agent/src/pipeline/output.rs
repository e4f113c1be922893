//! The output stage: log every outcome, then publish it, then complete the frame.
//!
//! This module owns the order that makes "nothing lost" true: outcomes are appended to the
//! result log in batches (one flush per batch), and only then is the live decision published
//! and the frame completed (the HTTP answer sent, the camera's file removed). Late model
//! results are logged and forwarded on `results`, never published as live decisions. Every
//! outcome is also handed to line monitoring, without waiting.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Emitted, Pipeline};
use crate::health::Health;
use crate::monitor::Monitor;
use crate::mqtt::Publisher;
use crate::result_log::ResultLog;

/// Most outcomes logged with one flush.
const BATCH: usize = 64;

/// What the output stage needs.
pub struct OutputStage {
    /// The result log outcomes are written to first.
    pub log: ResultLog,
    /// The MQTT session live decisions go to.
    pub publisher: Publisher,
    /// Counters and the ready flag.
    pub health: Arc<Health>,
    /// The pipeline, told when a frame is finished.
    pub pipeline: Pipeline,
    /// Line monitoring, handed every outcome.
    pub monitor: Option<Monitor>,
}

/// Runs the output stage until every sender of outcomes is gone.
pub fn spawn_output(
    stage: OutputStage,
    outcomes: mpsc::UnboundedReceiver<Emitted>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(stage.run(outcomes))
}

impl OutputStage {
    async fn run(self, mut outcomes: mpsc::UnboundedReceiver<Emitted>) {
        let mut batch = Vec::with_capacity(BATCH);
        while outcomes.recv_many(&mut batch, BATCH).await > 0 {
            let mut records: Vec<_> = batch.iter().map(|e| e.outcome.clone()).collect();
            let log = self.log.clone();
            let logged = tokio::task::spawn_blocking(move || {
                let result = log.append(&mut records);
                (result, records)
            })
            .await;
            let logged = match logged {
                Ok((Ok(()), records)) => {
                    for (emitted, record) in batch.iter_mut().zip(records) {
                        emitted.outcome.seq = record.seq;
                    }
                    true
                }
                Ok((Err(error), _)) => {
                    tracing::error!(%error, frames = batch.len(), "cannot write the result log; outcomes published but not kept");
                    false
                }
                Err(error) => {
                    tracing::error!(%error, "result log writer failed");
                    false
                }
            };
            for emitted in batch.drain(..) {
                self.finish(emitted, logged);
            }
            if logged {
                self.publisher.results_available();
            }
        }
    }

    fn finish(&self, emitted: Emitted, logged: bool) {
        let Emitted {
            outcome,
            completion,
            deadline,
            times,
            stats,
        } = emitted;
        self.health.record(&outcome);
        self.pipeline.metrics().outcome(&outcome);
        if let Some(monitor) = &self.monitor {
            monitor.observe(&outcome, stats);
        }
        if outcome.late {
            return;
        }
        self.publisher.decision(&outcome, deadline, times);
        tracing::debug!(station = %outcome.station, part = outcome.part, seq = outcome.seq, result = outcome.result.name(), label = %outcome.label, latency_ms = outcome.latency_ms, "decided");
        if let Some(completion) = completion {
            completion(&outcome, logged);
        }
        self.pipeline.finished();
    }
}
