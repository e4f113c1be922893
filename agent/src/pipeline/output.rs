//! The output stage: log every outcome, then hand it to the sinks, then complete the frame.
//!
//! This module owns the order that makes "nothing lost" true: outcomes are appended to the
//! result log in batches (one flush per batch), and only then do the sinks get them (the live
//! decision, line monitoring) and is the frame completed (the HTTP answer sent, the camera's
//! file removed). A frame file's identity is logged with its outcome, in the same transaction,
//! so a file the agent died before removing is recognised as decided at the next start. Late model results are logged and handed to the sinks for the record, never
//! completed again.

use defect_shared::error_chain::Chain;
use std::sync::Arc;

use tokio::sync::mpsc;

use tokio_util::sync::CancellationToken;

use super::sink::{Delivery, OutcomeSink};
use super::{Emitted, Pipeline};
use crate::health::Health;
use crate::result_log::ResultLog;

/// Most outcomes logged with one flush.
const BATCH: usize = 64;

/// What the output stage needs.
pub struct OutputStage {
    /// The result log outcomes are written to first.
    pub log: ResultLog,
    /// Counters and the ready flag.
    pub health: Arc<Health>,
    /// The pipeline, told when a frame is finished.
    pub pipeline: Pipeline,
    /// Everything that receives outcomes, in the order they get them.
    pub sinks: Vec<Arc<dyn OutcomeSink>>,
}

impl OutputStage {
    /// Runs the output stage until every sender of outcomes is gone, or until `stop` is
    /// cancelled and the outcomes already sent are handled.
    pub async fn run(
        self,
        mut outcomes: mpsc::UnboundedReceiver<Emitted>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                biased;
                received = outcomes.recv_many(&mut batch, BATCH) => received,
                () = stop.cancelled() => {
                    while batch.len() < BATCH && let Ok(emitted) = outcomes.try_recv() {
                        batch.push(emitted);
                    }
                    if batch.is_empty() {
                        return;
                    }
                    batch.len()
                }
            };
            if received == 0 {
                return;
            }
            let mut records: Vec<_> = batch.iter().map(|e| e.outcome.clone()).collect();
            let identities: Vec<_> = batch.iter().map(|e| e.identity.clone()).collect();
            let log = self.log.clone();
            let logged = tokio::task::spawn_blocking(move || {
                let result = log.append_frames(&mut records, &identities);
                (result, records)
            })
            .await;
            let logged = match logged {
                Ok((Ok(()), records)) => {
                    for (emitted, record) in batch.iter_mut().zip(records) {
                        emitted.outcome.seq = record.seq;
                        if emitted.completion.is_some() {
                            // A live outcome: how long it took to be logged, for admission.
                            self.pipeline
                                .admission()
                                .record_output(emitted.times.decided.elapsed());
                        }
                    }
                    true
                }
                Ok((Err(error), _)) => {
                    tracing::error!(error = %Chain(&error), frames = batch.len(), "cannot write the result log; outcomes published but not kept");
                    false
                }
                Err(error) => {
                    tracing::error!(error = %Chain(&error), "result log writer failed");
                    false
                }
            };
            for emitted in batch.drain(..) {
                self.finish(emitted, logged);
            }
            if logged {
                for sink in &self.sinks {
                    sink.logged();
                }
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
            identity: _,
        } = emitted;
        self.health.record(&outcome);
        self.pipeline.metrics().outcome(&outcome);
        let delivery = Delivery {
            deadline,
            times,
            stats,
        };
        for sink in &self.sinks {
            sink.outcome(&outcome, &delivery);
        }
        if outcome.is_late() {
            return;
        }
        tracing::debug!(station = %outcome.station, part = outcome.part, seq = outcome.seq, result = outcome.result().name(), label = %outcome.label(), latency_ms = outcome.latency_ms, "decided");
        if let Some(completion) = completion {
            completion(&outcome, logged);
        }
        self.pipeline.finished();
    }
}
