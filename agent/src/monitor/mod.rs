//! Line monitoring: alarms that catch a broken line, and data drift against the baseline.
//!
//! This module owns the monitoring task. The output stage hands it every outcome (with the
//! frame's input statistics when the model ran) through a bounded queue that never blocks
//! the frame path: when the task falls behind, observations are dropped and counted. Per
//! station the task keeps the rate alarms and the camera alarm (`alarms`), the line's running
//! state from its PLC (`line`), and a drift detector against the baseline of the bundle that
//! decided (`drift`), restarted whenever the model changes. Alarm changes (every alarm reported
//! cleared at start) and drift evaluations go to a [`Reporter`] (the MQTT session publishes them
//! retained on `P/S/alarms/<alarm>` and `P/S/drift`), and everything is on the [`Board`] that
//! the metrics endpoint reads.

pub mod alarms;
mod board;
pub mod drift;
pub mod line;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use board::Board;

use self::alarms::{AlarmEvent, AlarmKind, AlarmSettings, StationAlarms};
use self::drift::{DriftDetector, DriftReport, DriftSettings, FrameStats};
use crate::outcome::Outcome;
use crate::pipeline::{Delivery, OutcomeSink};
use crate::serving::ModelSlot;

/// Observations that may wait for the monitoring task.
const QUEUE: usize = 4096;

/// How often the cameras are judged.
const CAMERA_TICK: Duration = Duration::from_secs(1);

/// What the monitoring task is set up with.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// Rate and camera alarm limits.
    pub alarms: AlarmSettings,
    /// Drift settings; `None` switches drift monitoring off.
    pub drift: Option<DriftSettings>,
    /// Treat every line as running (no line state from PLCs).
    pub line_always_running: bool,
}

/// Where the monitoring task reports alarm changes and drift evaluations.
pub trait Reporter: Send + Sync {
    /// An alarm of `station` was raised or cleared (at start, every alarm is reported cleared).
    fn alarm(&self, station: &str, event: &AlarmEvent);
    /// A drift evaluation of `station`'s window, against the baseline of `model_version`.
    fn drift(&self, station: &str, report: &DriftReport, model_version: u64);
}

/// One outcome for the monitoring task.
#[derive(Debug)]
struct Observation {
    outcome: Outcome,
    stats: Option<FrameStats>,
}

/// Handle the output stage reports into; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    tx: mpsc::Sender<Observation>,
    board: Arc<Board>,
}

impl Monitor {
    /// Hands an outcome to the monitoring task without waiting; counted as dropped when the
    /// task is behind.
    pub fn observe(&self, outcome: &Outcome, stats: Option<FrameStats>) {
        let observation = Observation {
            outcome: outcome.clone(),
            stats,
        };
        if self.tx.try_send(observation).is_err() {
            self.board.count_dropped();
        }
    }

    /// What the metrics endpoint reads.
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }
}

impl OutcomeSink for Monitor {
    fn outcome(&self, outcome: &Outcome, delivery: &Delivery) {
        self.observe(outcome, delivery.stats);
    }
}

/// A line-state message from a station's PLC: the station and the raw payload.
#[derive(Debug, Clone)]
pub struct LineMessage {
    /// The station whose line it is about.
    pub station: String,
    /// The payload as received.
    pub payload: Vec<u8>,
}

/// Starts the monitoring task for `stations`, reporting to `reporter`. `line_states` carries
/// the line-state messages of the stations' PLCs.
pub fn start(
    settings: MonitorSettings,
    stations: &[String],
    slot: Arc<ModelSlot>,
    reporter: Arc<dyn Reporter>,
    line_states: mpsc::UnboundedReceiver<LineMessage>,
) -> Monitor {
    let (tx, rx) = mpsc::channel(QUEUE);
    let board = Arc::new(Board::new(stations));
    let now = Instant::now();
    let watches = stations
        .iter()
        .map(|id| {
            let watch = StationWatch {
                alarms: StationAlarms::new(settings.alarms.clone()),
                drift: None,
                last_frame: None,
                quiet_since: now,
                running: settings.line_always_running.then_some(true),
            };
            (id.clone(), watch)
        })
        .collect();
    let task = Task {
        settings,
        slot,
        reporter,
        board: Arc::clone(&board),
        watches,
    };
    tokio::spawn(task.run(rx, line_states));
    Monitor { tx, board }
}

/// One station's monitoring state.
struct StationWatch {
    alarms: StationAlarms,
    /// The detector and the `model_version` whose baseline it compares with.
    drift: Option<(u64, DriftDetector)>,
    /// When the last frame arrived.
    last_frame: Option<Instant>,
    /// Quiet time counts from here: the last frame, or the line starting to run.
    quiet_since: Instant,
    /// The line runs; `None` until its PLC said.
    running: Option<bool>,
}

struct Task {
    settings: MonitorSettings,
    slot: Arc<ModelSlot>,
    reporter: Arc<dyn Reporter>,
    board: Arc<Board>,
    watches: BTreeMap<String, StationWatch>,
}

impl Task {
    async fn run(
        mut self,
        mut observations: mpsc::Receiver<Observation>,
        mut line_states: mpsc::UnboundedReceiver<LineMessage>,
    ) {
        let mut ticker = tokio::time::interval(CAMERA_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish_cleared_states();
        let mut line_open = true;
        loop {
            tokio::select! {
                observation = observations.recv() => match observation {
                    Some(observation) => self.observe(observation),
                    None => return,
                },
                message = line_states.recv(), if line_open => match message {
                    Some(message) => self.line_state(&message.station, &message.payload),
                    None => line_open = false,
                },
                _ = ticker.tick() => self.judge_cameras(),
            }
        }
    }

    fn observe(&mut self, observation: Observation) {
        let Observation { outcome, stats } = observation;
        let Some(watch) = self.watches.get_mut(&outcome.station) else {
            return;
        };
        let mut events = Vec::new();
        let mut report = None;
        if !outcome.is_late() {
            let now = Instant::now();
            watch.last_frame = Some(now);
            watch.quiet_since = now;
            events.extend(watch.camera_event(now));
            events.extend(watch.alarms.record(&outcome));
        }
        if let (Some(settings), Some(stats)) = (&self.settings.drift, stats) {
            let (reset, evaluated) =
                watch.drift(&self.slot, settings, outcome.model_version(), &stats);
            events.extend(reset);
            report = evaluated;
        }
        if let Some(report) = &report
            && let Some(settings) = &self.settings.drift
        {
            let worst = report.worst().map_or(0.0, |w| w.1);
            events.extend(watch.alarms.drift(
                report.drifting,
                worst,
                settings.psi_alarm,
                report.frames,
            ));
        }
        self.board.update(&outcome.station, watch, report.as_ref());
        let station = outcome.station.clone();
        if let Some(report) = report {
            self.reporter
                .drift(&station, &report, outcome.model_version());
        }
        for event in events {
            self.raise(&station, &event);
        }
    }

    fn line_state(&mut self, station: &str, payload: &[u8]) {
        let Some(watch) = self.watches.get_mut(station) else {
            tracing::debug!(station, "line state of a station this agent does not serve");
            return;
        };
        if self.settings.line_always_running {
            return;
        }
        let Some(running) = line::parse_running(payload) else {
            tracing::warn!(
                station,
                payload = %String::from_utf8_lossy(payload),
                "line state not understood; expected running/stopped, 1/0 or {{\"running\":1}}"
            );
            return;
        };
        if running && watch.running != Some(true) {
            // Quiet time counts from the line starting, not from before it stopped.
            watch.quiet_since = Instant::now();
        }
        watch.running = Some(running);
        tracing::info!(station, running, "line state");
        let event = watch.camera_event(Instant::now());
        self.board.update(station, watch, None);
        let station = station.to_owned();
        if let Some(event) = event {
            self.raise(&station, &event);
        }
    }

    fn judge_cameras(&mut self) {
        let now = Instant::now();
        let mut events = Vec::new();
        for (station, watch) in &mut self.watches {
            if let Some(event) = watch.camera_event(now) {
                self.board.update(station, watch, None);
                events.push((station.clone(), event));
            }
        }
        for (station, event) in events {
            self.raise(&station, &event);
        }
    }

    /// Publishes every alarm of every station as cleared: at start nothing is raised, and a
    /// state retained on the broker from before a restart must not stay raised.
    fn publish_cleared_states(&self) {
        let alarms = &self.settings.alarms;
        for station in self.watches.keys() {
            for kind in AlarmKind::ALL {
                let limit = match kind {
                    AlarmKind::NoDecisionRate => alarms.no_decision_max,
                    AlarmKind::InvalidInputRate => alarms.invalid_input_max,
                    AlarmKind::RejectRate => alarms.reject_band.map_or(0.0, |b| b.1),
                    AlarmKind::CameraQuiet => alarms.camera_quiet.map_or(0.0, |d| d.as_secs_f64()),
                    AlarmKind::Drift => self.settings.drift.as_ref().map_or(0.0, |d| d.psi_alarm),
                };
                let cleared = AlarmEvent {
                    kind,
                    active: false,
                    value: 0.0,
                    limit,
                    window: 0,
                };
                self.reporter.alarm(station, &cleared);
            }
        }
    }

    fn raise(&self, station: &str, event: &AlarmEvent) {
        if event.active {
            tracing::warn!(
                station,
                alarm = event.kind.name(),
                value = event.value,
                limit = event.limit,
                window = event.window,
                "alarm raised"
            );
        } else {
            tracing::info!(
                station,
                alarm = event.kind.name(),
                value = event.value,
                limit = event.limit,
                "alarm cleared"
            );
        }
        self.board.count_alarm(station, event);
        self.reporter.alarm(station, event);
    }
}

impl StationWatch {
    /// The camera alarm raised or cleared at `now`.
    fn camera_event(&mut self, now: Instant) -> Option<AlarmEvent> {
        let quiet_for = now.saturating_duration_since(self.quiet_since);
        self.alarms.camera(quiet_for, self.running == Some(true))
    }

    /// Feeds the drift detector of the bundle that decided; a new bundle starts a new window
    /// against its own baseline and clears the previous bundle's drift alarm (returned).
    fn drift(
        &mut self,
        slot: &ModelSlot,
        settings: &DriftSettings,
        model_version: u64,
        stats: &FrameStats,
    ) -> (Option<AlarmEvent>, Option<DriftReport>) {
        let mut reset = None;
        if self
            .drift
            .as_ref()
            .is_none_or(|(mv, _)| *mv != model_version)
        {
            let Some(model) = slot.current() else {
                return (None, None);
            };
            let manifest = model.manifest();
            if manifest.model_version != model_version {
                // A frame of the previous bundle, decided just before the swap.
                return (None, None);
            }
            tracing::info!(
                model_version,
                "drift window starts against the bundle's baseline"
            );
            self.drift = Some((
                model_version,
                DriftDetector::new(&manifest.baseline, settings.clone()),
            ));
            reset = self.alarms.drift(false, 0.0, settings.psi_alarm, 0);
        }
        let report = self
            .drift
            .as_mut()
            .and_then(|(_, detector)| detector.observe(stats));
        (reset, report)
    }
}
