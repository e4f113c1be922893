//! libFuzzer driver of the `capture_receiver` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::capture_receiver::run(data));
