//! Test-only fault injection on the frame path.
//!
//! This module owns the triggers the end-to-end tests use to make a worker crash on one frame,
//! the way a decoder or runtime bug would. It is compiled only with the `fault-injection`
//! feature (on in the test crate's build, off in the packaged binary) and acts only when the
//! environment variable [`ENABLE_VAR`] is `1`, so a build that has it still ignores frames
//! that happen to start with a marker.
//!
//! A frame whose bytes start with [`PANIC_MARKER`] panics inside the isolated decode; one that
//! starts with [`ABORT_MARKER`] aborts the whole process, as a crash no isolation can catch.

/// Environment variable that arms the triggers when set to `1`.
pub const ENABLE_VAR: &str = "DEFECT_AGENT_FAULT_INJECTION";
/// A frame starting with these bytes panics while it is decoded.
pub const PANIC_MARKER: &[u8] = b"DEFECT-AGENT-FAULT:panic";
/// A frame starting with these bytes aborts the process while it is decoded.
pub const ABORT_MARKER: &[u8] = b"DEFECT-AGENT-FAULT:abort";

/// Panics or aborts on a marked frame when the triggers are armed; does nothing otherwise.
pub fn on_decode(bytes: &[u8]) {
    if std::env::var(ENABLE_VAR).as_deref() != Ok("1") {
        return;
    }
    if bytes.starts_with(PANIC_MARKER) {
        panic!("fault injection: this frame panics in decode");
    }
    if bytes.starts_with(ABORT_MARKER) {
        eprintln!("fault injection: this frame aborts the agent in decode");
        std::process::abort();
    }
}
