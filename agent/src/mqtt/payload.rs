//! The topic tree and the bytes of every message the agent publishes.
//!
//! This module owns the wire contract PLCs and SCADA depend on (documented in
//! `ARCHITECTURE.md`): topic names under the configured prefix, and payloads that are compact
//! ASCII, integers only where a PLC reads them, with short keys and no nesting. Every payload
//! starts with its schema version `v` so consumers can detect a change.

use serde::Serialize;

use crate::mqtt::settings::PayloadFormat;
use crate::outcome::Outcome;
pub use crate::serving::ModelInfo;

/// Schema version of every payload.
pub const SCHEMA_VERSION: u8 = 1;

/// Topic names under a prefix such as `acme/plant1/assembly/line3/vision`.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under `prefix` (validated by the configuration).
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>/<station>/decision`: one live decision per part, QoS 1, never retained.
    pub fn decision(&self, station: &str) -> String {
        format!("{}/{station}/decision", self.prefix)
    }

    /// `<prefix>/<station>/results`: every logged outcome, in order, store-and-forward.
    pub fn results(&self, station: &str) -> String {
        format!("{}/{station}/results", self.prefix)
    }

    /// `<prefix>/status`: retained `online` / `offline` of this agent.
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// `<prefix>/heartbeat`: periodic liveness with the `ready` flag.
    pub fn heartbeat(&self) -> String {
        format!("{}/heartbeat", self.prefix)
    }

    /// `<prefix>/model`: retained description of the model in service.
    pub fn model(&self) -> String {
        format!("{}/model", self.prefix)
    }

    /// `<prefix>/<station>/alarms/<alarm>`: retained state of one alarm.
    pub fn alarm(&self, station: &str, alarm: &str) -> String {
        format!("{}/{station}/alarms/{alarm}", self.prefix)
    }

    /// `<prefix>/<station>/drift`: retained latest drift evaluation.
    pub fn drift(&self, station: &str) -> String {
        format!("{}/{station}/drift", self.prefix)
    }

    /// `<prefix>/canary`: retained evidence on the candidate running in shadow.
    pub fn canary(&self) -> String {
        format!("{}/canary", self.prefix)
    }

    /// `<prefix>/+/line`: the filter of the line states PLCs publish.
    pub fn line_filter(&self) -> String {
        format!("{}/+/line", self.prefix)
    }

    /// The station of a line-state topic `<prefix>/<station>/line`.
    pub fn line_station<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let station = rest.strip_suffix("/line")?;
        (!station.is_empty() && !station.contains('/')).then_some(station)
    }
}

/// The live decision a PLC acts on.
///
/// JSON: `{"v":1,"part":123,"seq":45,"r":1,"c":2,"conf":987,"mv":3,"ts":1732400000000,"lat":12,"why":0}`;
/// CSV: the same integers in the same order, `1,123,45,1,2,987,3,1732400000000,12,0`.
pub fn decision(outcome: &Outcome, format: PayloadFormat) -> Vec<u8> {
    let fields = [
        ("v", u64::from(SCHEMA_VERSION)),
        ("part", outcome.part),
        ("seq", outcome.seq),
        ("r", u64::from(outcome.result().code())),
        ("c", u64::from(outcome.class())),
        ("conf", u64::from(outcome.confidence_permille())),
        ("mv", outcome.model_version()),
        ("ts", outcome.decided_ms),
        ("lat", u64::from(outcome.latency_ms)),
        ("why", u64::from(outcome.reason().map_or(0, |r| r.code()))),
    ];
    let text = match format {
        PayloadFormat::Json => {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        }
        PayloadFormat::Csv => fields
            .iter()
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join(","),
    };
    text.into_bytes()
}

/// One entry of the `results` traceability topic: the decision's integers plus the station,
/// label, reason name and whether it was late. Always JSON.
#[derive(Serialize)]
struct ResultRecord<'a> {
    v: u8,
    seq: u64,
    station: &'a str,
    part: u64,
    r: u8,
    c: u16,
    label: &'a str,
    conf: u16,
    mv: u64,
    acq: u64,
    ts: u64,
    lat: u32,
    why: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    late: bool,
}

/// Payload of one `results` message.
pub fn result(outcome: &Outcome) -> Vec<u8> {
    let record = ResultRecord {
        v: SCHEMA_VERSION,
        seq: outcome.seq,
        station: &outcome.station,
        part: outcome.part,
        r: outcome.result().code(),
        c: outcome.class(),
        label: outcome.label(),
        conf: outcome.confidence_permille(),
        mv: outcome.model_version(),
        acq: outcome.acquired_ms,
        ts: outcome.decided_ms,
        lat: outcome.latency_ms,
        why: outcome.reason().map_or(0, |r| r.code()),
        reason: outcome.reason().map(|r| r.name()),
        late: outcome.is_late(),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Retained status: `{"v":1,"state":"online"}`, optionally with the last model error.
pub fn status(online: bool, model_error: Option<&str>) -> Vec<u8> {
    let state = if online { "online" } else { "offline" };
    let mut text = format!("{{\"v\":{SCHEMA_VERSION},\"state\":\"{state}\"");
    if let Some(error) = model_error {
        let quoted = serde_json::Value::String(ascii(error, 200)).to_string();
        text.push_str(&format!(",\"model_error\":{quoted}"));
    }
    text.push('}');
    text.into_bytes()
}

/// Heartbeat: `{"v":1,"n":42,"ready":1,"ts":1732400000000}`.
pub fn heartbeat(counter: u64, ready: bool, ts_ms: u64) -> Vec<u8> {
    format!(
        "{{\"v\":{SCHEMA_VERSION},\"n\":{counter},\"ready\":{},\"ts\":{ts_ms}}}",
        u8::from(ready)
    )
    .into_bytes()
}

/// Retained model description: `{"v":1,"name":..,"version":..,"mv":..,"sha256":..,"since":..}`.
pub fn model(info: &ModelInfo) -> Vec<u8> {
    let mut value = serde_json::to_value(info).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("v".into(), SCHEMA_VERSION.into());
    }
    value.to_string().into_bytes()
}

/// `text` cut to `max` characters with anything outside printable ASCII replaced, so PLC
/// string parsers can take it.
fn ascii(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// An integer on the wire from a value and its scale (1000 for per-mille), rounded, never
/// negative.
fn scaled(value: f64, scale: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        // Clamped first, so the conversion cannot truncate.
        (value * scale).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// Retained alarm state:
/// `{"v":1,"alarm":"no_decision_rate","active":1,"value":120,"limit":50,"unit":"permille","n":200,"ts":...}`.
/// Rates are per-mille of the window's `n` outcomes, `camera_quiet` is in seconds, `drift` is
/// the worst feature's PSI in thousandths, `quarantined_frames` counts files.
pub fn alarm(event: &crate::monitor::alarms::AlarmEvent, ts_ms: u64) -> Vec<u8> {
    let scale = match event.kind.unit() {
        "s" | "frames" => 1.0,
        _ => 1000.0,
    };
    format!(
        "{{\"v\":{SCHEMA_VERSION},\"alarm\":\"{}\",\"active\":{},\"value\":{},\"limit\":{},\"unit\":\"{}\",\"n\":{},\"ts\":{ts_ms}}}",
        event.kind.name(),
        u8::from(event.active),
        scaled(event.value, scale),
        scaled(event.limit, scale),
        event.kind.unit(),
        event.window,
    )
    .into_bytes()
}

/// Retained drift evaluation, flat, PSI in thousandths:
/// `n` frames in the window, `seen` frames since the bundle went into service:
/// `{"v":1,"drifting":0,"mv":1,"n":300,"seen":1200,"brightness":12,"contrast":9,"defect_score":20,"reject_rate":1,"worst":"defect_score","ts":...}`.
pub fn drift(
    report: &crate::monitor::drift::DriftReport,
    model_version: u64,
    ts_ms: u64,
) -> Vec<u8> {
    let mut text = format!(
        "{{\"v\":{SCHEMA_VERSION},\"drifting\":{},\"mv\":{model_version},\"n\":{},\"seen\":{}",
        u8::from(report.drifting),
        report.frames,
        report.seen
    );
    for (feature, psi) in &report.psi {
        text.push_str(&format!(",\"{}\":{}", feature.name(), scaled(*psi, 1000.0)));
    }
    if let Some((feature, _)) = report.worst() {
        text.push_str(&format!(",\"worst\":\"{}\"", feature.name()));
    }
    text.push_str(&format!(",\"ts\":{ts_ms}}}"));
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use defect_models::Verdict;

    use super::*;
    use crate::outcome::{Decided, NoDecisionReason, Ruling};

    #[test]
    fn the_line_station_comes_from_the_topic() {
        assert_eq!(
            Topics::new("a/b").line_station("a/b/cam1/line"),
            Some("cam1")
        );
        assert_eq!(Topics::new("a").line_station("a/b/cam1/line"), None);
        assert_eq!(Topics::new("a/b").line_station("a/b//line"), None);
        assert_eq!(Topics::new("a/b").line_station("a/b/cam1/decision"), None);
    }

    fn outcome() -> Outcome {
        Outcome {
            seq: 45,
            station: "cam1".into(),
            part: 123,
            acquired_ms: 1_732_399_999_990,
            decided_ms: 1_732_400_000_000,
            latency_ms: 12,
            ruling: Ruling::Decided(Decided {
                verdict: Verdict::Reject,
                class: 2,
                label: "dent".into(),
                confidence_permille: 987,
                model_version: 3,
                late: false,
            }),
        }
    }

    #[test]
    fn decision_json_is_compact_ascii_integers() {
        let text = String::from_utf8(decision(&outcome(), PayloadFormat::Json)).expect("ascii");
        assert_eq!(
            text,
            r#"{"v":1,"part":123,"seq":45,"r":1,"c":2,"conf":987,"mv":3,"ts":1732400000000,"lat":12,"why":0}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(
            parsed
                .as_object()
                .expect("object")
                .values()
                .all(|v| v.is_u64())
        );
    }

    #[test]
    fn decision_csv_has_the_same_fields_in_order() {
        let text = String::from_utf8(decision(&outcome(), PayloadFormat::Csv)).expect("ascii");
        assert_eq!(text, "1,123,45,1,2,987,3,1732400000000,12,0");
        let mut o = outcome();
        o.ruling = Ruling::NoDecision {
            reason: NoDecisionReason::Deadline,
            detail: None,
        };
        let text = String::from_utf8(decision(&o, PayloadFormat::Csv)).expect("ascii");
        assert_eq!(text, "1,123,45,2,0,0,0,1732400000000,12,5");
    }

    #[test]
    fn alarms_are_integers_in_their_unit() {
        use crate::monitor::alarms::{AlarmEvent, AlarmKind};
        let event = |kind, value, limit, window| AlarmEvent {
            kind,
            active: true,
            value,
            limit,
            window,
        };
        let rate = alarm(&event(AlarmKind::NoDecisionRate, 0.12, 0.05, 200), 5);
        assert_eq!(
            String::from_utf8(rate).expect("ascii"),
            r#"{"v":1,"alarm":"no_decision_rate","active":1,"value":120,"limit":50,"unit":"permille","n":200,"ts":5}"#
        );
        let held = alarm(&event(AlarmKind::Quarantine, 2.0, 0.0, 0), 5);
        assert_eq!(
            String::from_utf8(held).expect("ascii"),
            r#"{"v":1,"alarm":"quarantined_frames","active":1,"value":2,"limit":0,"unit":"frames","n":0,"ts":5}"#
        );
    }

    #[test]
    fn status_and_heartbeat_are_short_json() {
        let status = String::from_utf8(status(true, Some("bad\nbundle"))).expect("ascii");
        assert_eq!(
            status,
            r#"{"v":1,"state":"online","model_error":"bad?bundle"}"#
        );
        let beat = String::from_utf8(heartbeat(7, true, 5)).expect("ascii");
        assert_eq!(beat, r#"{"v":1,"n":7,"ready":1,"ts":5}"#);
    }
}
