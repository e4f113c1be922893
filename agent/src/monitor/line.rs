//! Whether a station's line is running, as its PLC says on `P/S/line`.
//!
//! This module owns the payloads a PLC may publish there (kept simple for PLC MQTT clients):
//! `running`/`stopped`, `1`/`0`, `true`/`false`, or JSON `{"running":1}`. The camera alarm
//! only judges a camera while its line runs.

/// The running state in a line-state payload; `None` when it is not one of the accepted forms.
pub fn parse_running(payload: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    match text.to_ascii_lowercase().as_str() {
        "running" | "run" | "1" | "true" | "on" => return Some(true),
        "stopped" | "stop" | "0" | "false" | "off" => return Some(false),
        _ => {}
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.get("running")? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plc_payloads_in_every_accepted_form() {
        for yes in [
            "running",
            "RUNNING\n",
            "1",
            "true",
            "{\"running\":1}",
            "{\"running\":true}",
        ] {
            assert_eq!(parse_running(yes.as_bytes()), Some(true), "{yes}");
        }
        for no in ["stopped", "0", "false", "{\"running\":0}"] {
            assert_eq!(parse_running(no.as_bytes()), Some(false), "{no}");
        }
        for bad in ["", "maybe", "{\"state\":1}", "\u{fffd}"] {
            assert_eq!(parse_running(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_running(&[0xff, 0xfe]), None);
    }
}
