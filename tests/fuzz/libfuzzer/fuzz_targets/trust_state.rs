//! libFuzzer driver of the `trust_state` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::trust_state::run(data));
