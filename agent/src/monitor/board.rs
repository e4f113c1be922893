//! What the monitoring task last knew, per station, for the metrics endpoint.
//!
//! This module owns the [`Board`]: a copy of each station's rates, camera and line state,
//! alarm states, drift scores and files held in quarantine, written by the monitoring task
//! after every change and read when the metrics endpoint is scraped; and its `defect_agent_*`
//! monitoring metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::StationWatch;
use super::alarms::{AlarmEvent, AlarmKind, Rates};
use super::drift::{DriftReport, Feature};

/// One station as last seen.
#[derive(Debug, Clone, Default)]
struct View {
    rates: Rates,
    last_frame: Option<Instant>,
    running: Option<bool>,
    active: [bool; AlarmKind::ALL.len()],
    raised: [u64; AlarmKind::ALL.len()],
    psi: Vec<(Feature, f64)>,
    evaluations: u64,
    /// Files in the quarantine folder; `None` for a station without one.
    quarantined: Option<usize>,
}

/// The monitoring state the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct Board {
    stations: Mutex<BTreeMap<String, View>>,
    dropped: AtomicU64,
}

impl Board {
    /// A board for `stations`, everything at zero.
    pub fn new(stations: &[String]) -> Board {
        Board {
            stations: Mutex::new(
                stations
                    .iter()
                    .map(|s| (s.clone(), View::default()))
                    .collect(),
            ),
            dropped: AtomicU64::new(0),
        }
    }

    /// Counts an observation the monitoring task could not take.
    pub(super) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations dropped because the monitoring task was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Copies a station's state after a change.
    pub(super) fn update(&self, station: &str, watch: &StationWatch, report: Option<&DriftReport>) {
        let Ok(mut stations) = self.stations.lock() else {
            return;
        };
        let view = stations.entry(station.to_owned()).or_default();
        view.rates = watch.alarms.rates();
        view.last_frame = watch.last_frame;
        view.running = watch.running;
        view.quarantined = watch
            .quarantine
            .as_ref()
            .map(|_| watch.alarms.quarantined());
        for kind in AlarmKind::ALL {
            view.active[kind as usize] = watch.alarms.is_active(kind);
        }
        if let Some(report) = report {
            view.psi.clone_from(&report.psi);
            view.evaluations += 1;
        }
    }

    /// Counts an alarm raised.
    pub(super) fn count_alarm(&self, station: &str, event: &AlarmEvent) {
        if !event.active {
            return;
        }
        if let Ok(mut stations) = self.stations.lock() {
            stations.entry(station.to_owned()).or_default().raised[event.kind as usize] += 1;
        }
    }

    /// Whether `alarm` is raised at `station`.
    pub fn is_active(&self, station: &str, alarm: AlarmKind) -> bool {
        self.stations
            .lock()
            .ok()
            .and_then(|s| s.get(station).map(|v| v.active[alarm as usize]))
            .unwrap_or(false)
    }

    fn snapshot(&self) -> BTreeMap<String, View> {
        self.stations.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Board {
    /// Registers the monitoring metrics in `registry`, read from the board when scraped.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(BoardMetrics(Arc::clone(self))));
    }
}

/// The board as a metrics collector.
struct BoardMetrics(Arc<Board>);

impl fmt::Debug for BoardMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoardMetrics").finish_non_exhaustive()
    }
}

impl Collector for BoardMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stations = self.0.snapshot();
        let now = Instant::now();
        let per_station = |encoder: &mut DescriptorEncoder,
                           name: &str,
                           help: &str,
                           value: &dyn Fn(&View) -> Option<f64>|
         -> fmt::Result {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (station, view) in &stations {
                if let Some(v) = value(view) {
                    metric
                        .encode_family(&[("station", station.as_str())])?
                        .encode_gauge(&v)?;
                }
            }
            Ok(())
        };
        let e = &mut encoder;
        per_station(
            e,
            "window_frames",
            "Live outcomes in the monitoring window the rates are taken over.",
            &|v| Some(v.rates.frames as f64),
        )?;
        per_station(
            e,
            "no_decision_ratio",
            "Share of no-decision results in the monitoring window.",
            &|v| Some(v.rates.no_decision),
        )?;
        per_station(
            e,
            "invalid_input_ratio",
            "Share of missing or unreadable frames in the monitoring window.",
            &|v| Some(v.rates.invalid_input),
        )?;
        per_station(
            e,
            "reject_ratio",
            "Share of decided frames rejected in the monitoring window.",
            &|v| v.rates.reject,
        )?;
        per_station(
            e,
            "seconds_since_last_frame",
            "Seconds since the station's last frame; absent before the first.",
            &|v| {
                v.last_frame
                    .map(|t| now.saturating_duration_since(t).as_secs_f64())
            },
        )?;
        per_station(
            e,
            "line_running",
            "1 while the station's PLC says the line runs, 0 when stopped; absent until it says.",
            &|v| v.running.map(|r| f64::from(u8::from(r))),
        )?;
        per_station(
            e,
            "quarantined_frames",
            "Frame files held in the station's quarantine folder, waiting for a person to look at them; absent for a station without a hot folder.",
            &|v| v.quarantined.map(|n| n as f64),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "alarm_active",
                "1 while the alarm is raised at the station.",
                None,
                MetricType::Gauge,
            )?;
            for (station, view) in &stations {
                for kind in AlarmKind::ALL {
                    metric
                        .encode_family(&[("station", station.as_str()), ("alarm", kind.name())])?
                        .encode_gauge(&i64::from(view.active[kind as usize]))?;
                }
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "alarms_raised",
                "Times the alarm was raised at the station since start.",
                None,
                MetricType::Counter,
            )?;
            for (station, view) in &stations {
                for kind in AlarmKind::ALL {
                    metric
                        .encode_family(&[("station", station.as_str()), ("alarm", kind.name())])?
                        .encode_counter::<NoLabelSet, _, u64>(&view.raised[kind as usize], None)?;
                }
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "drift_psi",
                "Population stability index of the feature in the last full drift window against the bundle's baseline.",
                None,
                MetricType::Gauge,
            )?;
            for (station, view) in &stations {
                for (feature, psi) in &view.psi {
                    metric
                        .encode_family(&[
                            ("station", station.as_str()),
                            ("feature", feature.name()),
                        ])?
                        .encode_gauge(psi)?;
                }
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "drift_evaluations",
                "Full drift windows evaluated at the station since start.",
                None,
                MetricType::Counter,
            )?;
            for (station, view) in &stations {
                metric
                    .encode_family(&[("station", station.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&view.evaluations, None)?;
            }
        }
        let dropped = self.0.dropped();
        let mut metric = e.encode_descriptor(
            "monitor_dropped_observations",
            "Outcomes the monitoring task could not take because it was behind.",
            None,
            MetricType::Counter,
        )?;
        metric.encode_counter::<NoLabelSet, _, u64>(&dropped, None)
    }
}
