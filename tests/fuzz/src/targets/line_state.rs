//! The PLC's line-state payloads (`P/S/line`), as the agent's monitor reads them.
//!
//! Whatever the payload, a plain-text state reads the same with surrounding blanks and in any
//! letter case.

use defect_agent::monitor::line::parse_running;

/// Reads `data` as a line-state payload.
pub fn run(data: &[u8]) {
    let payload = data;
    let state = parse_running(payload);
    let mut padded = b" \t".to_vec();
    padded.extend(payload.to_ascii_uppercase());
    padded.extend(b"\r\n");
    if state.is_some() && !payload.iter().any(|b| *b == b'{' || *b == b'"') {
        assert_eq!(
            parse_running(&padded),
            state,
            "payload {payload:?} reads differently padded or in capitals"
        );
    }
}
