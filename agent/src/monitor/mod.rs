//! Line monitoring: alarms that catch a broken line, and data drift against the baseline.
//!
//! This module owns the monitoring task. The output stage hands it every outcome (with the
//! frame's input statistics when the model ran) through a bounded queue that never blocks
//! the frame path: when the task falls behind, observations are dropped and counted. Per
//! station the task keeps the rate alarms and the camera alarm (`alarms`), the line's running
//! state from its PLC (`line`), a drift detector against the baseline of the bundle that
//! decided (`drift`), restarted whenever the model changes, and the count of frame files held
//! in its quarantine folder (`quarantine`), taken at start, when a part is quarantined and on
//! every tick. Alarm changes (every alarm reported cleared at start, but `quarantined_frames`
//! raised when the folder already holds files) and drift evaluations go to a [`Reporter`] (the
//! MQTT session publishes them retained on `P/S/alarms/<alarm>` and `P/S/drift`), and
//! everything is on the [`Board`] that the metrics endpoint reads.

pub mod alarms;
mod board;
pub mod drift;
pub mod line;
mod quarantine;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use board::Board;

use self::alarms::{AlarmEvent, AlarmKind, AlarmSettings, StationAlarms};
use self::drift::{DriftDetector, DriftReport, DriftSettings, FrameStats};
use self::quarantine::QuarantineFolder;
use crate::outcome::{NoDecisionReason, Outcome};
use crate::pipeline::{Delivery, OutcomeSink};
use crate::serving::ModelSlot;

/// Observations that may wait for the monitoring task.
const QUEUE: usize = 4096;

/// How often the cameras are judged and the quarantine folders counted.
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
    /// The quarantine folder of each station that has one (a hot folder), counted for
    /// `quarantined_frames`.
    pub quarantine: BTreeMap<String, PathBuf>,
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
                quarantine: settings
                    .quarantine
                    .get(id)
                    .cloned()
                    .map(QuarantineFolder::new),
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
    /// The station's quarantine folder; `None` without a hot folder.
    quarantine: Option<QuarantineFolder>,
}

/// A new count of a station's quarantine folder, with what it holds.
struct QuarantineChange {
    station: String,
    event: AlarmEvent,
    /// The count before.
    before: usize,
    folder: PathBuf,
    files: Vec<String>,
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
        // Files quarantined before this start must not be forgotten: their alarm is raised
        // instead of published cleared.
        let held = self.count_quarantines(None);
        for (station, watch) in &self.watches {
            if watch.quarantine.is_some() {
                self.board.update(station, watch, None);
            }
        }
        self.publish_cleared_states();
        for change in &held {
            self.report_quarantine(change);
        }
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
                _ = ticker.tick() => {
                    self.judge_cameras();
                    for change in self.count_quarantines(None) {
                        self.report_quarantine(&change);
                    }
                }
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
        if outcome.reason() == Some(NoDecisionReason::Quarantined) {
            // The file is in the folder before its part's outcome is made: count it now.
            for change in self.count_quarantines(Some(&station)) {
                self.report_quarantine(&change);
            }
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

    /// Publishes every alarm of every station as cleared: at start nothing is raised (but
    /// files already held in quarantine, reported apart), and a state retained on the broker
    /// from before a restart must not stay raised.
    fn publish_cleared_states(&self) {
        let alarms = &self.settings.alarms;
        for (station, watch) in &self.watches {
            for kind in AlarmKind::ALL {
                if watch.alarms.is_active(kind) {
                    continue;
                }
                let limit = match kind {
                    AlarmKind::NoDecisionRate => alarms.no_decision_max,
                    AlarmKind::InvalidInputRate => alarms.invalid_input_max,
                    AlarmKind::RejectRate => alarms.reject_band.map_or(0.0, |b| b.1),
                    AlarmKind::CameraQuiet => alarms.camera_quiet.map_or(0.0, |d| d.as_secs_f64()),
                    AlarmKind::Drift => self.settings.drift.as_ref().map_or(0.0, |d| d.psi_alarm),
                    AlarmKind::Quarantine => 0.0,
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

    /// Counts the quarantine folder of the station `only` names, or of every station with
    /// `None`; returns the counts that changed (the board is updated).
    fn count_quarantines(&mut self, only: Option<&str>) -> Vec<QuarantineChange> {
        let mut changes = Vec::new();
        for (station, watch) in &mut self.watches {
            if only.is_some_and(|only| only != station) {
                continue;
            }
            let Some(folder) = watch.quarantine.as_mut() else {
                continue;
            };
            let Some(files) = folder.files(station) else {
                continue;
            };
            let before = watch.alarms.quarantined();
            let Some(event) = watch.alarms.quarantine(files.len()) else {
                continue;
            };
            let folder = folder.path().to_owned();
            self.board.update(station, watch, None);
            changes.push(QuarantineChange {
                station: station.clone(),
                event,
                before,
                folder,
                files,
            });
        }
        changes
    }

    /// Logs and reports a new count of a quarantine folder: raised (an error: a person must
    /// look at the files), a file more or fewer, or cleared once the folder is empty.
    fn report_quarantine(&self, change: &QuarantineChange) {
        let QuarantineChange {
            station,
            event,
            before,
            folder,
            files,
        } = change;
        let (alarm, folder, count) = (event.kind.name(), folder.display(), files.len());
        let names = quarantine::listed(files);
        if !event.active {
            tracing::info!(station, alarm, folder = %folder, "alarm cleared: the quarantine folder was emptied");
        } else if *before == 0 {
            tracing::error!(station, alarm, folder = %folder, files = %names, count, "alarm raised: frame files held in quarantine; inspect each file, then remove it from the folder to clear the alarm");
            self.board.count_alarm(station, event);
        } else if count > *before {
            tracing::error!(station, alarm, folder = %folder, files = %names, count, "another frame file held in quarantine; inspect each file, then remove it from the folder to clear the alarm");
        } else {
            tracing::info!(station, alarm, folder = %folder, files = %names, count, "the quarantine folder still holds frame files");
        }
        self.reporter.alarm(station, event);
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::outcome::DecisionResult;

    /// How long a test waits for a report (the tick is 1 s).
    const WAIT: Duration = Duration::from_secs(10);

    /// A report as (station, alarm, active, value).
    type Report = (String, AlarmKind, bool, f64);

    /// Reports, sent to the test as they come.
    struct Reports(Mutex<mpsc::UnboundedSender<Report>>);

    impl Reporter for Reports {
        fn alarm(&self, station: &str, event: &AlarmEvent) {
            if let Ok(tx) = self.0.lock() {
                let _ = tx.send((station.to_owned(), event.kind, event.active, event.value));
            }
        }

        fn drift(&self, _station: &str, _report: &DriftReport, _model_version: u64) {}
    }

    /// The monitoring task for `cam1` (with `quarantine` as its folder) and `cam2` (without
    /// one); its reports, and the line-state sender that keeps it listening.
    fn started(
        quarantine: PathBuf,
    ) -> (
        Monitor,
        mpsc::UnboundedReceiver<Report>,
        mpsc::UnboundedSender<LineMessage>,
    ) {
        let (tx, reports) = mpsc::unbounded_channel();
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let settings = MonitorSettings {
            alarms: AlarmSettings {
                camera_quiet: None,
                ..AlarmSettings::default()
            },
            drift: None,
            line_always_running: true,
            quarantine: BTreeMap::from([("cam1".to_owned(), quarantine)]),
        };
        let monitor = start(
            settings,
            &["cam1".to_owned(), "cam2".to_owned()],
            Arc::new(ModelSlot::default()),
            Arc::new(Reports(Mutex::new(tx))),
            line_rx,
        );
        (monitor, reports, line_tx)
    }

    /// The next report on `alarm`, skipping the others.
    async fn next(
        reports: &mut mpsc::UnboundedReceiver<Report>,
        alarm: AlarmKind,
    ) -> (String, bool, f64) {
        tokio::time::timeout(WAIT, async {
            loop {
                let (station, kind, active, value) = reports.recv().await.expect("task runs");
                if kind == alarm {
                    return (station, active, value);
                }
            }
        })
        .await
        .expect("a report in time")
    }

    #[tokio::test]
    async fn files_quarantined_before_the_start_raise_the_alarm_and_an_emptied_folder_clears_it() {
        let state = tempfile::tempdir().expect("tempdir");
        let folder = state.path().join("quarantine/cam1");
        std::fs::create_dir_all(&folder).expect("folder");
        std::fs::write(folder.join("part-10.jpg"), b"poison").expect("write");
        let (monitor, mut reports, _line) = started(folder.clone());
        // At start: raised at cam1, never published cleared first; cleared at cam2.
        let mut at_start = Vec::new();
        for _ in 0..2 * AlarmKind::ALL.len() {
            let (station, kind, active, value) = tokio::time::timeout(WAIT, reports.recv())
                .await
                .expect("start reports")
                .expect("task runs");
            if kind == AlarmKind::Quarantine {
                at_start.push((station, active, value));
            } else {
                assert!(!active, "{station} {kind:?}");
            }
        }
        at_start.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            at_start,
            vec![
                ("cam1".to_owned(), true, 1.0),
                ("cam2".to_owned(), false, 0.0)
            ]
        );
        assert!(monitor.board().is_active("cam1", AlarmKind::Quarantine));

        // The operator moves the file away: the next tick clears the alarm.
        std::fs::remove_file(folder.join("part-10.jpg")).expect("remove");
        assert_eq!(
            next(&mut reports, AlarmKind::Quarantine).await,
            ("cam1".to_owned(), false, 0.0)
        );
        assert!(!monitor.board().is_active("cam1", AlarmKind::Quarantine));
    }

    #[tokio::test]
    async fn a_quarantined_part_raises_the_alarm_with_the_count() {
        let state = tempfile::tempdir().expect("tempdir");
        let folder = state.path().join("quarantine/cam1");
        std::fs::create_dir_all(&folder).expect("folder");
        let (monitor, mut reports, _line) = started(folder.clone());
        for _ in 0..2 * AlarmKind::ALL.len() {
            let (_, _, active, _) = tokio::time::timeout(WAIT, reports.recv())
                .await
                .expect("start reports")
                .expect("task runs");
            assert!(!active);
        }
        for (n, name) in ["part-10.jpg", "part-11.jpg"].into_iter().enumerate() {
            std::fs::write(folder.join(name), b"poison").expect("write");
            let outcome = crate::outcome::fixture::outcome(
                DecisionResult::NoDecision,
                "",
                Some(NoDecisionReason::Quarantined),
            );
            monitor.observe(&outcome, None);
            assert_eq!(
                next(&mut reports, AlarmKind::Quarantine).await,
                ("cam1".to_owned(), true, (n + 1) as f64)
            );
        }
        assert!(monitor.board().is_active("cam1", AlarmKind::Quarantine));
    }
}
