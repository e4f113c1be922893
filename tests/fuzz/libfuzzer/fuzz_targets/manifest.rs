//! libFuzzer driver of the `manifest` harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defect_fuzz::targets::manifest::run(data));
