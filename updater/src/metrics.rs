//! Prometheus metrics of `model-updater run`.
//!
//! This module owns the `model_updater_*` metric names. Every value is read from the
//! [`StatusBoard`] when scraped: the phase, the current model, the last check and success and
//! the bad versions from its status document, checks by outcome and bytes downloaded from its
//! activity counters. Nothing is threaded through the update cycle for the metrics' sake. The
//! `[metrics]` listener that serves them (`/metrics`, `/healthz`, `/readyz`, always ready) is
//! `defect_shared::metrics_listener`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::status::{CheckOutcome, Phase, StatusBoard};

/// Prefix of every metric name.
const PREFIX: &str = "model_updater";

/// The status board, read on every scrape.
#[derive(Debug)]
struct Board(Arc<StatusBoard>);

impl Collector for Board {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.0.get();
        let activity = self.0.activity();
        let mut state = encoder.encode_descriptor(
            "state",
            "The updater's phase: 1 for the current one, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for phase in Phase::ALL {
            let labels = [("state", phase.name())];
            state
                .encode_family(&labels)?
                .encode_gauge(&i64::from(phase == status.state))?;
        }
        gauge(
            &mut encoder,
            "model_version",
            "model_version of the bundle the store's current pointer names (0 when none).",
            status.current.as_ref().map_or(0, |m| m.model_version),
        )?;
        let mut checks = encoder.encode_descriptor(
            "checks",
            "Finished update checks since start, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for outcome in CheckOutcome::ALL {
            let labels = [("outcome", outcome.name())];
            checks
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&activity.checks(outcome), None)?;
        }
        gauge(
            &mut encoder,
            "last_check_timestamp_seconds",
            "End of the last check since start, Unix time (0 before the first).",
            seconds(status.last_check_ms),
        )?;
        gauge(
            &mut encoder,
            "last_success_timestamp_seconds",
            "End of the last check since start that reached and verified the repository, Unix time (0 before the first).",
            seconds(status.last_success_ms),
        )?;
        gauge(
            &mut encoder,
            "bad_versions",
            "Versions marked bad on this box, never installed again.",
            status.bad.len(),
        )?;
        let downloaded = activity.downloaded_bytes().load(Ordering::Relaxed);
        encoder
            .encode_descriptor(
                "downloaded",
                "Bundle bytes received from the repository since start.",
                Some(&Unit::Bytes),
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&downloaded, None)
    }
}

/// Unix milliseconds as seconds; 0 for never.
fn seconds(ms: Option<u64>) -> f64 {
    ms.map_or(0.0, |ms| ms as f64 / 1000.0)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// The registry a scrape encodes: every metric read from `board`.
pub fn registry(board: Arc<StatusBoard>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Board(board)));
    registry
}

#[cfg(test)]
mod tests {
    use defect_shared::exposition::Format;

    use super::*;
    use crate::state::ModelRef;

    #[test]
    fn a_scrape_reads_the_phase_model_checks_and_times_from_the_board() {
        let dir = tempfile::tempdir().expect("tempdir");
        let board = Arc::new(StatusBoard::new(dir.path()));
        board.update(|s| {
            s.state = Phase::Offline;
            s.current = Some(ModelRef {
                model: "surface-classifier".into(),
                model_version: 7,
                version: "7.0".into(),
                sha256: "ab".into(),
            });
            s.last_check_ms = Some(1_700_000_000_500);
            s.bad = vec!["one".into(), "two".into()];
        });
        board.activity().count_check(CheckOutcome::Offline);
        board
            .activity()
            .downloaded_bytes()
            .fetch_add(4096, Ordering::Relaxed);
        let text = defect_shared::exposition::render(&registry(board), Format::Prometheus)
            .expect("render");
        for line in [
            "model_updater_state{state=\"offline\"} 1\n",
            "model_updater_state{state=\"idle\"} 0\n",
            "model_updater_model_version 7\n",
            "# TYPE model_updater_checks_total counter\n",
            "model_updater_checks_total{outcome=\"offline\"} 1\n",
            "model_updater_checks_total{outcome=\"up_to_date\"} 0\n",
            "model_updater_last_check_timestamp_seconds 1700000000.5\n",
            "model_updater_last_success_timestamp_seconds 0.0\n",
            "model_updater_bad_versions 2\n",
            "model_updater_downloaded_bytes_total 4096\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
