//! libFuzzer driver of the `line_state` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::line_state::run(data));
