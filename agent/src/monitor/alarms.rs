//! Alarms that catch a broken line: their kinds, limits and raise/clear rules.
//!
//! This module owns the rules, free of I/O: over a sliding window of a station's last live
//! outcomes, the share of "no decision" results, the share of inputs that were missing or
//! unreadable, and the reject rate (of decided frames) against its expected band; and the
//! camera gone quiet (no frame for a set time while the line runs). Each alarm is raised when
//! its value crosses its limit and cleared only once the value is back inside by a margin
//! (hysteresis), so a rate sitting at its limit does not flap. Drift (`drift`) is raised and
//! cleared by its own detector and only reported here. Frames held in quarantine
//! (`quarantined_frames`) raise their alarm while the station's quarantine folder holds any
//! file, whatever the rates say, and clear it once an operator has emptied the folder.

use std::collections::VecDeque;
use std::time::Duration;

use crate::outcome::{DecisionResult, NoDecisionReason, Outcome};

/// The alarms a station can raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmKind {
    /// Too many "no decision" results in the window.
    NoDecisionRate,
    /// Too many missing or unreadable frames in the window.
    InvalidInputRate,
    /// The reject rate of decided frames is outside its expected band.
    RejectRate,
    /// No frame for too long while the line runs.
    CameraQuiet,
    /// Live statistics drifted away from the model's baseline.
    Drift,
    /// Frame files wait in the station's quarantine folder for a person to look at.
    Quarantine,
}

impl AlarmKind {
    /// Every alarm, in report order.
    pub const ALL: [AlarmKind; 6] = [
        AlarmKind::NoDecisionRate,
        AlarmKind::InvalidInputRate,
        AlarmKind::RejectRate,
        AlarmKind::CameraQuiet,
        AlarmKind::Drift,
        AlarmKind::Quarantine,
    ];

    /// snake_case name: the last topic level and the metric label.
    pub const fn name(self) -> &'static str {
        match self {
            AlarmKind::NoDecisionRate => "no_decision_rate",
            AlarmKind::InvalidInputRate => "invalid_input_rate",
            AlarmKind::RejectRate => "reject_rate",
            AlarmKind::CameraQuiet => "camera_quiet",
            AlarmKind::Drift => "drift",
            AlarmKind::Quarantine => "quarantined_frames",
        }
    }

    /// Unit of the alarm's value and limit on the wire.
    pub const fn unit(self) -> &'static str {
        match self {
            AlarmKind::CameraQuiet => "s",
            AlarmKind::Drift => "psi_milli",
            AlarmKind::Quarantine => "frames",
            _ => "permille",
        }
    }
}

/// A change of one alarm's state, with what caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    /// Which alarm.
    pub kind: AlarmKind,
    /// Raised (true) or cleared (false).
    pub active: bool,
    /// The measured value: a share 0-1, seconds, a PSI, or files in quarantine.
    pub value: f64,
    /// The limit it was compared with (for the reject band: the bound crossed or nearest).
    pub limit: f64,
    /// Outcomes in the window (0 for the camera and quarantine alarms).
    pub window: usize,
}

/// Limits of the rate alarms and the camera alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSettings {
    /// Live outcomes in the sliding window; rates are judged only on a full window.
    pub window: usize,
    /// Largest share of "no decision" results.
    pub no_decision_max: f64,
    /// Largest share of missing or unreadable frames.
    pub invalid_input_max: f64,
    /// Expected band of the reject rate of decided frames; `None` switches the alarm off.
    pub reject_band: Option<(f64, f64)>,
    /// No frame for this long while the line runs raises `camera_quiet`; `None` is off.
    pub camera_quiet: Option<Duration>,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            window: 200,
            no_decision_max: 0.05,
            invalid_input_max: 0.02,
            reject_band: None,
            camera_quiet: Some(Duration::from_secs(10)),
        }
    }
}

/// Share of the distance to a limit a value must come back by before its alarm clears.
const CLEAR_MARGIN: f64 = 0.25;

/// One outcome as the rate alarms see it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    no_decision: bool,
    invalid: bool,
    /// `Some(rejected)` for a pass or reject.
    decided: Option<bool>,
}

/// The rates of a station's window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Outcomes in the window.
    pub frames: usize,
    /// Share of "no decision" results.
    pub no_decision: f64,
    /// Share of missing or unreadable frames.
    pub invalid_input: f64,
    /// Reject share of decided frames; `None` with none decided.
    pub reject: Option<f64>,
}

/// One station's rate and camera alarms.
#[derive(Debug, Clone)]
pub struct StationAlarms {
    settings: AlarmSettings,
    window: VecDeque<Seen>,
    no_decisions: usize,
    invalid: usize,
    decided: usize,
    rejected: usize,
    /// Files in the quarantine folder when last counted.
    quarantined: usize,
    active: [bool; AlarmKind::ALL.len()],
}

impl StationAlarms {
    /// Alarms with these limits, all cleared.
    pub fn new(settings: AlarmSettings) -> StationAlarms {
        StationAlarms {
            window: VecDeque::with_capacity(settings.window + 1),
            settings,
            no_decisions: 0,
            invalid: 0,
            decided: 0,
            rejected: 0,
            quarantined: 0,
            active: [false; AlarmKind::ALL.len()],
        }
    }

    /// Whether `kind` is raised.
    pub fn is_active(&self, kind: AlarmKind) -> bool {
        self.active[kind as usize]
    }

    /// The window's current rates.
    pub fn rates(&self) -> Rates {
        let n = self.window.len();
        let share = |count: usize| if n == 0 { 0.0 } else { count as f64 / n as f64 };
        Rates {
            frames: n,
            no_decision: share(self.no_decisions),
            invalid_input: share(self.invalid),
            reject: (self.decided > 0).then(|| self.rejected as f64 / self.decided as f64),
        }
    }

    /// Adds a live outcome and returns the rate alarms it raised or cleared.
    pub fn record(&mut self, outcome: &Outcome) -> Vec<AlarmEvent> {
        let seen = Seen {
            no_decision: outcome.result() == DecisionResult::NoDecision,
            // Frames the agent could not take in: unreadable, crashing the decoder, quarantined.
            invalid: matches!(
                outcome.reason(),
                Some(
                    NoDecisionReason::UnreadableImage
                        | NoDecisionReason::InternalError
                        | NoDecisionReason::Quarantined
                )
            ),
            decided: match outcome.result() {
                DecisionResult::Pass => Some(false),
                DecisionResult::Reject => Some(true),
                DecisionResult::NoDecision => None,
            },
        };
        self.count(seen, 1);
        self.window.push_back(seen);
        if self.window.len() > self.settings.window
            && let Some(oldest) = self.window.pop_front()
        {
            self.count(oldest, -1);
        }
        if self.window.len() < self.settings.window {
            return Vec::new();
        }
        let rates = self.rates();
        let mut events = Vec::new();
        let n = rates.frames;
        self.upper(
            AlarmKind::NoDecisionRate,
            rates.no_decision,
            self.settings.no_decision_max,
            n,
            &mut events,
        );
        self.upper(
            AlarmKind::InvalidInputRate,
            rates.invalid_input,
            self.settings.invalid_input_max,
            n,
            &mut events,
        );
        if let (Some((low, high)), Some(reject)) = (self.settings.reject_band, rates.reject) {
            self.band(reject, low, high, n, &mut events);
        }
        events
    }

    /// Judges the camera: `quiet_for` since the last frame (or since the line started),
    /// `running` whether the line runs. Returns the camera alarm when raised or cleared.
    pub fn camera(&mut self, quiet_for: Duration, running: bool) -> Option<AlarmEvent> {
        let limit = self.settings.camera_quiet?;
        let kind = AlarmKind::CameraQuiet;
        let quiet = running && quiet_for >= limit;
        if quiet == self.is_active(kind) {
            return None;
        }
        self.active[kind as usize] = quiet;
        Some(AlarmEvent {
            kind,
            active: quiet,
            value: quiet_for.as_secs_f64(),
            limit: limit.as_secs_f64(),
            window: 0,
        })
    }

    /// Records drift raised or cleared by the drift detector, as an alarm event.
    pub fn drift(
        &mut self,
        drifting: bool,
        worst_psi: f64,
        limit: f64,
        frames: usize,
    ) -> Option<AlarmEvent> {
        let kind = AlarmKind::Drift;
        if drifting == self.is_active(kind) {
            return None;
        }
        self.active[kind as usize] = drifting;
        Some(AlarmEvent {
            kind,
            active: drifting,
            value: worst_psi,
            limit,
            window: frames,
        })
    }

    /// Files in the quarantine folder when last counted.
    pub fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// Judges the quarantine folder now holding `files` files: the alarm is raised while it
    /// holds any and cleared once it is empty. Returns the alarm whenever the count changed, so
    /// a raised alarm always carries the count (the caller tells a raise from a new count by
    /// [`StationAlarms::is_active`] before the call).
    pub fn quarantine(&mut self, files: usize) -> Option<AlarmEvent> {
        if files == self.quarantined {
            return None;
        }
        let kind = AlarmKind::Quarantine;
        self.quarantined = files;
        self.active[kind as usize] = files > 0;
        Some(AlarmEvent {
            kind,
            active: files > 0,
            value: files as f64,
            limit: 0.0,
            window: 0,
        })
    }

    fn count(&mut self, seen: Seen, sign: isize) {
        let add = |n: &mut usize, yes: bool| {
            if yes {
                *n = n.saturating_add_signed(sign);
            }
        };
        add(&mut self.no_decisions, seen.no_decision);
        add(&mut self.invalid, seen.invalid);
        add(&mut self.decided, seen.decided.is_some());
        add(&mut self.rejected, seen.decided == Some(true));
    }

    /// An alarm on a share that must stay at or below `limit`.
    fn upper(
        &mut self,
        kind: AlarmKind,
        value: f64,
        limit: f64,
        n: usize,
        out: &mut Vec<AlarmEvent>,
    ) {
        let active = self.is_active(kind);
        let next = if active {
            value > limit * (1.0 - CLEAR_MARGIN)
        } else {
            value > limit
        };
        if next != active {
            self.active[kind as usize] = next;
            out.push(AlarmEvent {
                kind,
                active: next,
                value,
                limit,
                window: n,
            });
        }
    }

    /// The reject-rate alarm: the rate must stay within `low..=high`.
    fn band(&mut self, value: f64, low: f64, high: f64, n: usize, out: &mut Vec<AlarmEvent>) {
        let kind = AlarmKind::RejectRate;
        let active = self.is_active(kind);
        // Raised outside the band; cleared only once back inside by a margin. A lower bound
        // of 0 is no bound.
        let margin = if active {
            (high - low) * CLEAR_MARGIN / 2.0
        } else {
            0.0
        };
        let next = (low > 0.0 && value < low + margin) || value > high - margin;
        if next != active {
            self.active[kind as usize] = next;
            let limit = if value > (low + high) / 2.0 {
                high
            } else {
                low
            };
            out.push(AlarmEvent {
                kind,
                active: next,
                value,
                limit,
                window: n,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: DecisionResult, reason: Option<NoDecisionReason>) -> Outcome {
        crate::outcome::fixture::outcome(result, "", reason)
    }

    fn pass() -> Outcome {
        outcome(DecisionResult::Pass, None)
    }

    fn reject() -> Outcome {
        outcome(DecisionResult::Reject, None)
    }

    fn unreadable() -> Outcome {
        outcome(
            DecisionResult::NoDecision,
            Some(NoDecisionReason::UnreadableImage),
        )
    }

    fn settings() -> AlarmSettings {
        AlarmSettings {
            window: 100,
            no_decision_max: 0.05,
            invalid_input_max: 0.02,
            reject_band: Some((0.01, 0.10)),
            camera_quiet: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn nothing_is_judged_before_the_window_is_full() {
        let mut alarms = StationAlarms::new(settings());
        for _ in 0..99 {
            assert!(alarms.record(&unreadable()).is_empty());
        }
        let events = alarms.record(&unreadable());
        let kinds: Vec<AlarmKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![AlarmKind::NoDecisionRate, AlarmKind::InvalidInputRate]
        );
    }

    #[test]
    fn unreadable_frames_raise_both_rates_and_clear_only_below_the_margin() {
        let mut alarms = StationAlarms::new(settings());
        // 5 % rejects keeps the band quiet.
        for i in 0_usize..100 {
            let o = if i.is_multiple_of(20) {
                reject()
            } else {
                pass()
            };
            assert!(alarms.record(&o).is_empty(), "frame {i}");
        }
        let mut raised = Vec::new();
        for i in 0_usize..3 {
            raised.extend(alarms.record(&unreadable()).into_iter().map(|e| (i, e)));
        }
        // The third unreadable frame makes 3 % > 2 %.
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].0, 2);
        assert_eq!(raised[0].1.kind, AlarmKind::InvalidInputRate);
        assert!(raised[0].1.active);
        // Back to 2 % (the limit) is not enough to clear; 1 % (below 1.5 %) is.
        let mut cleared_at = None;
        for i in 0_usize..200 {
            let o = if i.is_multiple_of(20) {
                reject()
            } else {
                pass()
            };
            if let Some(e) = alarms.record(&o).first() {
                assert_eq!(e.kind, AlarmKind::InvalidInputRate);
                assert!(!e.active);
                assert!(e.value <= 0.015);
                cleared_at = Some(i);
                break;
            }
        }
        assert!(cleared_at.is_some(), "never cleared");
    }

    #[test]
    fn a_reject_rate_outside_its_band_is_raised_in_both_directions() {
        let mut alarms = StationAlarms::new(settings());
        for _ in 0..100 {
            alarms.record(&pass());
        }
        assert!(alarms.is_active(AlarmKind::RejectRate), "0 % is below 1 %");
        for i in 0_usize..100 {
            alarms.record(
                &(if i.is_multiple_of(20) {
                    reject()
                } else {
                    pass()
                }),
            );
        }
        assert!(!alarms.is_active(AlarmKind::RejectRate), "5 % is inside");
        for i in 0_usize..100 {
            alarms.record(
                &(if i.is_multiple_of(4) {
                    reject()
                } else {
                    pass()
                }),
            );
        }
        assert!(
            alarms.is_active(AlarmKind::RejectRate),
            "25 % is above 10 %"
        );
    }

    #[test]
    fn the_camera_is_quiet_only_while_the_line_runs() {
        let mut alarms = StationAlarms::new(settings());
        assert_eq!(alarms.camera(Duration::from_secs(60), false), None);
        let raised = alarms
            .camera(Duration::from_secs(11), true)
            .expect("raised");
        assert!(raised.active);
        assert_eq!(alarms.camera(Duration::from_secs(12), true), None);
        let cleared = alarms.camera(Duration::ZERO, true).expect("cleared");
        assert!(!cleared.active);
        assert!(alarms.camera(Duration::from_secs(30), false).is_none());
    }

    #[test]
    fn a_quarantined_file_raises_at_once_and_only_an_empty_folder_clears() {
        let mut alarms = StationAlarms::new(settings());
        let kind = AlarmKind::Quarantine;
        assert_eq!(alarms.quarantine(0), None, "an empty folder at start");
        let raised = alarms.quarantine(1).expect("raised");
        assert_eq!(
            raised,
            AlarmEvent {
                kind,
                active: true,
                value: 1.0,
                limit: 0.0,
                window: 0,
            }
        );
        assert!(alarms.is_active(kind));
        assert_eq!(alarms.quarantine(1), None, "no change, no report");
        // A second file, then the operator removing one: the raised alarm carries the count.
        let more = alarms.quarantine(2).expect("new count");
        assert!(more.active);
        assert_eq!(more.value, 2.0);
        let fewer = alarms.quarantine(1).expect("new count");
        assert!(fewer.active);
        assert_eq!(fewer.value, 1.0);
        assert!(alarms.is_active(kind));
        let cleared = alarms.quarantine(0).expect("cleared");
        assert!(!cleared.active);
        assert_eq!(cleared.value, 0.0);
        assert!(!alarms.is_active(kind));
        assert_eq!(alarms.quarantined(), 0);
    }

    #[test]
    fn a_full_quarantine_is_judged_without_a_window_of_outcomes() {
        // Even a window full of good frames does not hide files held in quarantine.
        let mut alarms = StationAlarms::new(settings());
        for i in 0_usize..100 {
            let o = if i.is_multiple_of(20) {
                reject()
            } else {
                pass()
            };
            alarms.record(&o);
        }
        assert!(alarms.quarantine(3).is_some_and(|e| e.active));
        assert!(alarms.record(&pass()).is_empty());
        assert!(alarms.is_active(AlarmKind::Quarantine));
        assert_eq!(AlarmKind::Quarantine.name(), "quarantined_frames");
        assert_eq!(AlarmKind::Quarantine.unit(), "frames");
    }
}
